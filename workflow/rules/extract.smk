rule tiny_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/models/{model}.log",
    conda:
        "../../envs/extract.yaml"
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
    conda:
        "../../envs/extract.yaml"
    threads: 2
    resources:
        gpu=lambda wc: 0 if config["extract"]["device"] == "cpu" else 1,
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
