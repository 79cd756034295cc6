rule caption_pairs:
    input:
        **split_inputs("captions"),
        **split_inputs("pool"),
        images="results/data/images.parquet",
    output:
        "results/tasks/labels/caption_pairs.parquet",
    log:
        "logs/tasks/caption_pairs.log",
    benchmark:
        "benchmarks/out/tasks/caption_pairs.tsv"
    conda:
        CONDA_ENV
    resources:
        gpu=model_gpus,
        mem_mb=caption_pool_mem_mb,
        device=config["extract"]["device"],
    params:
        positives_per_image=config["caption"]["positives_per_image"],
        candidates_per_positive=config["caption"]["candidates_per_positive"],
        embedding_model=config["caption"]["embedding_model"],
        seed=config["caption"]["seed"],
        negatives=caption_negatives(),
    script:
        "../scripts/caption_pairs.py"


rule object_rows:
    input:
        **split_inputs("instances"),
        images="results/data/images.parquet",
    output:
        "results/tasks/labels/object_rows.parquet",
    log:
        "logs/tasks/object_rows.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=annotations_mem_mb("instances"),
    script:
        "../scripts/object_rows.py"


rule caption_task:
    input:
        "results/tasks/labels/caption_pairs.parquet",
    output:
        TASK.format(task="caption-{prompt}"),
    log:
        "logs/tasks/caption-{prompt}.log",
    conda:
        CONDA_ENV
    params:
        template=lambda wc: caption_prompt(wc.prompt)["template"],
        negatives=lambda wc: caption_prompt(wc.prompt)["negatives"],
    script:
        "../scripts/caption_task.py"


rule object_task:
    input:
        rows="results/tasks/labels/object_rows.parquet",
        instances=COCO_SOURCES["train_instances"],
    output:
        TASK.format(task="object-{prompt}"),
    log:
        "logs/tasks/object-{prompt}.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=annotations_mem_mb("instances"),
    params:
        prompt=lambda wc: config["object"]["prompts"][wc.prompt],
        seed=config["object"]["seed"],
    script:
        "../scripts/object_task.py"


rule negative_examples:
    input:
        "results/tasks/labels/caption_pairs.parquet",
    output:
        table="results/tasks/negative_examples.parquet",
        html=report(
            "results/tasks/negative_examples.html",
            caption="../report/negative_examples.rst",
            category="Tasks",
            labels={"table": "hard negatives: examples"},
        ),
    log:
        "logs/tasks/negative_examples.log",
    conda:
        CONDA_ENV
    params:
        n=config["caption"]["audit_examples"],
        seed=config["caption"]["seed"],
    script:
        "../scripts/negative_examples.py"
