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


localrules:
    extraction_settings,


# What a model's extraction computes with (its entry, poolings, shards, image size, storage
# dtype), in a job of its own that reruns when any of it changes, and with it every job after it.
# The image pass and the tables' jobs read it as an ordinary input, so such an edit reruns them
# however the image pass is tied to the tables (below).
rule extraction_settings:
    output:
        EXTRACT_SETTINGS,
    log:
        "logs/extract/{model}/settings.log",
    wildcard_constraints:
        model=IMAGE_MODEL,
    params:
        **extract_params(),
    run:
        write_settings(params, output[0])


# One GPU job per (model, part) pools the prompts of every task and prompt variant together:
# one vision pass and one image-prefix pass per image. The variants come from the config and
# the label tables, which it reads as inputs whose age does not count: adding, editing or
# removing a variant, or remaking a label table, does not rerun it; each task's own job (extract,
# below) carries what its tables depend on, and pools its prompts alone where the pass staged
# nothing for it (vlprobe.extract.passes).
rule image_passes:
    input:
        settings=EXTRACT_SETTINGS,
        images="results/data/images.parquet",
        model=model_input,
        caption_pairs=ancient(CAPTION_PAIRS),
        object_rows=ancient(OBJECT_ROWS),
        instances=ancient(COCO_SOURCES["train_instances"]),
    output:
        PASS_SUMMARY,
    log:
        "logs/extract/{model}/passes/part-{part}.log",
    benchmark:
        "benchmarks/out/extract/{model}/passes/part-{part}.tsv"
    wildcard_constraints:
        model=IMAGE_MODEL,
    retries: config["extract"]["retries"]
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    # how the job runs, not what it computes: resources, so that editing them reruns nothing
    resources:
        **extract_resources(),
    params:
        **extract_params(),
        staging=lambda wc: PASS_STAGING.format(**wc),
        published=lambda wc: ACTIVATIONS.format(
            model=wc.model, task="{task}", part=wc.part
        ),
    script:
        "../scripts/extract.py"


# a task's tables: the ones its image pass staged, moved into place; where none were staged
# (a variant added or edited since the pass ran) it pools its own prompts. The pass's summary is
# an input whose age does not count: a pass rerun republishes nothing.
rule extract:
    input:
        task=TASK,
        settings=EXTRACT_SETTINGS,
        images="results/data/images.parquet",
        model=model_input,
        passes=ancient(PASS_SUMMARY),
    output:
        directory(ACTIVATIONS),
    log:
        "logs/extract/{model}/{task}/part-{part}.log",
    benchmark:
        "benchmarks/out/extract/{model}/{task}/part-{part}.tsv"
    wildcard_constraints:
        model=IMAGE_MODEL,
    retries: config["extract"]["retries"]
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **extract_resources(),
    params:
        **extract_params(),
        staging=lambda wc: PASS_STAGING.format(model=wc.model, part=wc.part),
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
