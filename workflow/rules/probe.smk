rule probe:
    input:
        task="results/tasks/{task}.parquet",
        parts=activation_parts,
    output:
        table="results/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.parquet",
        scores="results/scores/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.parquet",
    log:
        "logs/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.log",
    benchmark:
        "benchmarks/out/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    params:
        probe=lambda wc: PROBES[wc.probe].to_dict(),
        evaluation=EVALUATION.to_dict(),
    script:
        "../scripts/probe.py"
