rule probe:
    input:
        task=TASK,
        parts=activation_parts,
    output:
        table=PROBE_TABLE,
        scores=SCORE_TABLE,
    log:
        f"logs/probes/{PROBE_JOB}.log",
    benchmark:
        f"benchmarks/out/probes/{PROBE_JOB}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=probe_mem_mb,
        runtime=probe_runtime,
    params:
        probe=lambda wc: PROBES[wc.probe].to_dict(),
        evaluation=EVALUATION.to_dict(),
    script:
        "../scripts/probe.py"
