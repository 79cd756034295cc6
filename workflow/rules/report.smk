rule summary:
    input:
        probe_tables(),
    output:
        report(
            "results/metrics/summary.parquet",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        "logs/report/summary.log",
    conda:
        "../../envs/probe.yaml"
    script:
        "../scripts/summary.py"


rule figure:
    input:
        "results/metrics/summary.parquet",
    output:
        html=report(
            "results/figures/{figure}.html",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}", "format": "interactive"},
        ),
        png=report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}", "format": "image"},
        ),
    log:
        "logs/report/{figure}.log",
    wildcard_constraints:
        figure="|".join(FIGURES),
    conda:
        "../../envs/report.yaml"
    params:
        style=config["figures"],
    script:
        "../scripts/figure.py"
