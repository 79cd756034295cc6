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
    # where the fits run is how, not what: a resource, so that moving them reruns nothing
    resources:
        gpu=probe_gpus,
        device=config["probe_device"],
        mem_mb=probe_mem_mb,
        runtime=probe_runtime,
    params:
        probe=lambda wc: PROBES[wc.probe].to_dict(),
        evaluation=EVALUATION.to_dict(),
    script:
        "../scripts/probe.py"
