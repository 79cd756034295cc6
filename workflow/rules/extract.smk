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
        task="results/tasks/{task}.parquet",
        images="results/data/images.parquet",
        model=model_input,
    output:
        directory("results/activations/{model}/{task}/part-{part}"),
    log:
        "logs/extract/{model}/{task}/part-{part}.log",
    benchmark:
        "benchmarks/out/extract/{model}/{task}/part-{part}.tsv"
    wildcard_constraints:
        model="[A-Za-z0-9_.-]+(@(random_init|blank_image))?",
    retries: config["extract"]["retries"]
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=lambda wc: 0 if config["extract"]["device"] == "cpu" else 1,
        batch_size=extract_batch_size,
    params:
        model=lambda wc: {**model_entry(wc.model), "hf_id": model_dir(wc.model)},
        images_dir=coco_sources()["images"],
        parts=config["extract"]["parts"],
        shards=lambda wc: shards_of(wc.model),
        poolings=config["extract"]["poolings"],
        device=config["extract"]["device"],
        chunk_samples=config["extract"]["chunk_samples"],
    script:
        "../scripts/extract.py"


rule text_embedding:
    input:
        task="results/tasks/{task}.parquet",
    output:
        directory(f"results/activations/{TEXT_EMBEDDING_MODEL}/{{task}}/part-0"),
    log:
        f"logs/extract/{TEXT_EMBEDDING_MODEL}/{{task}}/part-0.log",
    benchmark:
        f"benchmarks/out/extract/{TEXT_EMBEDDING_MODEL}/{{task}}/part-0.tsv"
    wildcard_constraints:
        task="caption-[A-Za-z0-9_]+",
    conda:
        CONDA_ENV
    params:
        embedding_model=config["caption"]["embedding_model"],
    script:
        "../scripts/text_embedding.py"


rule first_tokens:
    input:
        tasks=expand(
            "results/tasks/object-{prompt}.parquet", prompt=config["object"]["prompts"]
        ),
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
    threads: 2
    resources:
        gpu=lambda wc: 0 if config["extract"]["device"] == "cpu" else 1,
    params:
        model=lambda wc: {**model_entry(wc.model), "hf_id": model_dir(wc.model)},
        prompts=list(config["object"]["prompts"]),
        images_dir=coco_sources()["images"],
        device=config["extract"]["device"],
        category=config["first_tokens"]["category"],
        top_k=config["first_tokens"]["top_k"],
    script:
        "../scripts/first_tokens.py"
