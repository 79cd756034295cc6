"""Helpers shared by the rules: config validation, names of tasks, models, shards and outputs."""

from pathlib import Path

from snakemake.utils import validate

from vlprobe.storage import layer_shards


validate(config, schema="../schemas/config.schema.yaml")


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    task="(caption|object)-[A-Za-z0-9_]+",
    prompt="[A-Za-z0-9_]+",
    pooling="[a-z_]+",
    probe="[a-z_]+",
    part="[0-9]+",
    first="[0-9]+",
    last="[0-9]+",


DEMO_COCO = "resources/demo-coco"


def coco_files():
    """The COCO-format files the study reads: generated (demo) or a local directory."""
    coco = config["coco"]
    if coco["source"] == "demo":
        root = Path(DEMO_COCO)
        files = {
            "instances": root / "annotations/instances.json",
            "captions": root / "annotations/captions.json",
            "images": root / "images",
        }
        files["caption_pool"] = files["captions"]
    else:
        local = coco["local"]
        root = Path(local["root"])
        files = {key: root / local[key] for key in ("instances", "captions", "images")}
        files["caption_pool"] = root / (local["caption_pool"] or local["captions"])
    return {key: str(path) for key, path in files.items()}


def task_names():
    """Every task as '<kind>-<prompt variant>', e.g. caption-tao, object-withcat."""
    return [f"{kind}-{prompt}" for kind in ("caption", "object") for prompt in config[kind]["prompts"]]


def task_kind(task):
    return task.split("-", 1)[0]


def task_prompt(task):
    return task.split("-", 1)[1]


def model_entry(model):
    return config["models"][model]


def model_dir(model):
    """A tiny model is built by the workflow; any other is loaded from its hub id or path."""
    entry = model_entry(model)
    return f"resources/models/{model}" if "tiny" in entry else entry["hf_id"]


def model_input(wildcards):
    """The built tiny model's directory is a job input; hub checkpoints are not files here."""
    return [model_dir(wildcards.model)] if "tiny" in model_entry(wildcards.model) else []


def shards_of(model):
    """Inclusive hidden-state ranges of one model (num_layers + 1 states, embeddings first)."""
    return layer_shards(model_entry(model)["num_layers"] + 1, config["extract"]["layers_per_shard"])


def activation_parts(wildcards):
    return [
        f"results/activations/{wildcards.model}/{wildcards.task}/part-{part}"
        for part in range(config["extract"]["parts"])
    ]


def probe_tables():
    return [
        f"results/probes/{model}/{task}/{pooling}/{probe}/layers-{first}-{last}.parquet"
        for model in config["models"]
        for task in task_names()
        for pooling in config["extract"]["poolings"]
        for probe in config["probes"]
        for first, last in shards_of(model)
    ]


def figure_names():
    kinds = {task_kind(task) for task in task_names()}
    return [name for name, kind in FIGURES.items() if kind in kinds]


# figure name -> the task kind it draws
FIGURES = {"caption_accuracy": "caption", "object_f1": "object"}


def final_outputs():
    return ["results/metrics/summary.parquet"] + expand(
        "results/figures/{figure}.{ext}", figure=figure_names(), ext=["html", "png"]
    )
