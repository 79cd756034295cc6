rule summary:
    input:
        probe_tables(SCORE_TABLE),
    output:
        report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        "logs/report/summary.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/summary.py"


rule best_layers:
    input:
        SUMMARY,
    output:
        report(
            "results/metrics/best_layers.tsv",
            caption="../report/best_layers.rst",
            category="Tables",
        ),
    log:
        "logs/report/best_layers.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/best_layers.py"


rule figure:
    input:
        figure_input,
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
        svg="results/figures/{figure}.svg",
    log:
        "logs/report/{figure}.log",
    wildcard_constraints:
        figure="|".join(FIGURES),
    conda:
        CONDA_ENV
    params:
        style=config["figures"],
    script:
        "../scripts/figure.py"


rule negative_similarity:
    input:
        "results/tasks/labels/caption_pairs.parquet",
    output:
        html=report(
            "results/figures/negative_similarity.html",
            caption="../report/negative_similarity.rst",
            category="Tasks",
            labels={"figure": "negative_similarity", "format": "interactive"},
        ),
        png=report(
            "results/figures/negative_similarity.png",
            caption="../report/negative_similarity.rst",
            category="Tasks",
            labels={"figure": "negative_similarity", "format": "image"},
        ),
    log:
        "logs/report/negative_similarity.log",
    conda:
        CONDA_ENV
    params:
        width=config["figures"]["width"],
        height=config["figures"]["height"],
    script:
        "../scripts/negative_similarity.py"
