rule tiny_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/models/{model}.log",
    conda:
        CONDA_ENV
    params:
        family=lambda wc: model_entry(wc.model)["family"],
        num_layers=lambda wc: model_entry(wc.model)["num_layers"],
        tiny=lambda wc: model_entry(wc.model)["tiny"],
    script:
        "../scripts/tiny_model.py"


rule extract:
    input:
        task=TASK,
        images="results/data/images.parquet",
        model=model_input,
    output:
        directory(ACTIVATIONS),
    log:
        "logs/extract/{model}/{task}/part-{part}.log",
    benchmark:
        "benchmarks/out/extract/{model}/{task}/part-{part}.tsv"
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+(@(random_init|blank_image))?",
    retries: config["extract"]["retries"]
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    # how the job runs, not what it computes: resources, so that editing them reruns nothing
    resources:
        gpu=model_gpus,
        mem_mb=extract_mem_mb,
        runtime=extract_runtime,
        device=config["extract"]["device"],
        batch_size=extract_batch_size,
        entry_batch_size=lambda wc: model_entry(wc.model)["batch_size"],
        chunk_samples=config["extract"]["chunk_samples"],
    params:
        model=model_param,
        images_dir=COCO_SOURCES["images"],
        parts=config["extract"]["parts"],
        shards=lambda wc: shards_of(wc.model),
        poolings=config["extract"]["poolings"],
        max_side=config["images"]["max_side"],
        storage_dtype=config["extract"]["storage_dtype"],
    script:
        "../scripts/extract.py"


rule text_embedding:
    input:
        task=TASK,
    output:
        directory(ACTIVATIONS.format(model=TEXT_EMBEDDING_MODEL, task="{task}", part=0)),
    log:
        f"logs/extract/{TEXT_EMBEDDING_MODEL}/{{task}}/part-0.log",
    benchmark:
        f"benchmarks/out/extract/{TEXT_EMBEDDING_MODEL}/{{task}}/part-0.tsv"
    wildcard_constraints:
        task="caption-[A-Za-z0-9_]+",
    conda:
        CONDA_ENV
    resources:
        gpu=model_gpus,
        device=config["extract"]["device"],
    params:
        embedding_model=config["caption"]["embedding_model"],
    script:
        "../scripts/text_embedding.py"


rule first_tokens:
    input:
        tasks=expand(TASK, task=[f"object-{p}" for p in config["object"]["prompts"]]),
        images="results/data/images.parquet",
        model=model_input,
    output:
        table="results/first_tokens/{model}.parquet",
        tsv=report(
            "results/first_tokens/{model}.tsv",
            caption="../report/first_tokens.rst",
            category="Tables",
            labels={"table": "first tokens", "model": "{model}"},
        ),
    log:
        "logs/first_tokens/{model}.log",
    benchmark:
        "benchmarks/out/first_tokens/{model}.tsv"
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+",
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        gpu=model_gpus,
        mem_mb=first_tokens_mem_mb,
        device=config["extract"]["device"],
        batch_size=lambda wc: model_entry(wc.model)["batch_size"],
    params:
        model=model_param,
        prompts=list(config["object"]["prompts"]),
        images_dir=COCO_SOURCES["images"],
        max_side=config["images"]["max_side"],
        category=config["first_tokens"]["category"],
        top_k=config["first_tokens"]["top_k"],
    script:
        "../scripts/first_tokens.py"
