rule probe:
    input:
        task="results/tasks/{task}.parquet",
        parts=activation_parts,
    output:
        "results/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.parquet",
    log:
        "logs/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.log",
    benchmark:
        "benchmarks/out/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.tsv"
    conda:
        "../../envs/probe.yaml"
    threads: 1
    params:
        probe=lambda wc: config["probes"][wc.probe],
    script:
        "../scripts/probe.py"
