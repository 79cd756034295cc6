"""Helpers shared by the rules: config validation, names of tasks, models, shards and outputs."""

import json
import math
from pathlib import Path

import jsonschema
from snakemake.utils import validate

from vlprobe.baselines import (
    MODEL_BASELINES,
    TEXT_EMBEDDING_MODEL,
    TEXT_EMBEDDING_POOLING,
    baseline_entry,
    split_model_name,
)
from vlprobe import sizing
from vlprobe.data import SPLITS
from vlprobe.settings import FIGURES, EvaluationConfig, probe_settings
from vlprobe.storage import layer_shards, write_text
from vlprobe.tasks import variant_spec


def validated(config, schema):
    """``config`` checked against ``schema`` (defaults filled in); a violation is one line
    naming the key, e.g. ``config models.m.family: 'llama' is not one of [...]``."""
    try:
        validate(config, schema=schema)
    except WorkflowError as error:
        # snakemake raises while handling jsonschema's error, which names the key
        violation = error.__context__
        if not isinstance(violation, jsonschema.ValidationError):
            raise
        key = ".".join(str(part) for part in violation.absolute_path) or "(top level)"
        raise WorkflowError(f"config {key}: {violation.message}") from None


validated(config, schema="../schemas/config.schema.yaml")
# probe and evaluation settings are checked, and their defaults filled in, by the library's
# dataclasses (the one source of each default and range), before any job runs
try:
    PROBES = {
        name: probe_settings(name, settings)
        for name, settings in config["probes"].items()
    }
    EVALUATION = EvaluationConfig.from_dict(config["evaluation"])
except ValueError as error:
    raise WorkflowError(f"config: {error}") from None


wildcard_constraints:
    model="[A-Za-z0-9_.-]+(@[a-z_]+)?",
    task="(caption|object)-[A-Za-z0-9_]+",
    prompt="[A-Za-z0-9_]+",
    pooling="[a-z_]+(:-?[0-9]+)?",
    probe="[a-z_]+",
    part="[0-9]+",
    first="[0-9]+",
    last="[0-9]+",


# every rule's environment under --software-deployment-method conda (relative to the rule files);
# it mirrors requirements/lock.txt
CONDA_ENV = "../../envs/vlprobe.yaml"
DEMO_COCO = "resources/demo-coco"
COCO = "resources/coco"
# the outputs that helpers expand as other jobs' inputs: each template is written once here
TASK = "results/tasks/{task}.parquet"
ACTIVATIONS = "results/activations/{model}/{task}/part-{part}"
# the image pass of (model, part): its summary (declared) and the tables it stages (not
# declared: a job's declared outputs are deleted before it runs; vlprobe.extract.passes)
PASS_SUMMARY = "results/activations/{model}/passes/part-{part}.json"
PASS_STAGING = "results/activations/{model}/passes/part-{part}"
# what a model's extraction computes with, written by a job of its own (see extract.smk)
EXTRACT_SETTINGS = "results/activations/{model}/settings.json"
CAPTION_PAIRS = "results/tasks/labels/caption_pairs.parquet"
OBJECT_ROWS = "results/tasks/labels/object_rows.parquet"
PROBE_JOB = "{model}/{task}/{pooling}/{probe}/layers-{first}-{last}"
PROBE_TABLE = f"results/probes/{PROBE_JOB}.parquet"
SCORE_TABLE = f"results/scores/{PROBE_JOB}.parquet"
SUMMARY = "results/metrics/summary.parquet"
# model jobs: the cores each one takes
MODEL_THREADS = 2
# the models whose extraction shows images: configured ones and their baselines, not the
# text-embedding baseline
IMAGE_MODEL = f"[A-Za-z0-9_.-]+(@({'|'.join(MODEL_BASELINES)}))?"


def coco_sources():
    """Per split, the COCO files the study reads, and the image folder.

    Keys: {split}_instances, {split}_captions, {split}_pool (captions whose captions are the
    split's hard-negative pool), images.
    """
    coco = config["coco"]
    if coco["source"] == "download":
        files = {}
        for split in SPLITS:
            name = coco[f"{split}_source"]
            files[f"{split}_instances"] = f"{COCO}/annotations/instances_{name}.json"
            files[f"{split}_captions"] = f"{COCO}/annotations/captions_{name}.json"
            files[f"{split}_pool"] = files[f"{split}_captions"]
        return {**files, "images": f"{COCO}/images"}
    if coco["source"] == "demo":
        root, local = Path(DEMO_COCO), {
            "instances": "annotations/instances.json",
            "captions": "annotations/captions.json",
            "images": "images",
            "caption_pool": None,
        }
    else:
        root, local = Path(coco["local"]["root"]), coco["local"]
    files = {"images": str(root / local["images"])}
    for split in SPLITS:
        files[f"{split}_instances"] = str(root / local["instances"])
        files[f"{split}_captions"] = str(root / local["captions"])
        files[f"{split}_pool"] = str(
            root / (local["caption_pool"] or local["captions"])
        )
    return files


def coco_annotation_files():
    """The annotation files extracted from the COCO archive (download source)."""
    names = sorted({config["coco"][f"{split}_source"] for split in SPLITS})
    return expand(
        f"{COCO}/annotations/{{kind}}_{{name}}.json",
        kind=["captions", "instances"],
        name=names,
    )


COCO_SOURCES = coco_sources()


def split_inputs(kind):
    """Per split, the {split}_<kind> job inputs, for kind instances, captions or pool (a
    script reads them back with vlprobe.data.split_files)."""
    return {f"{split}_{kind}": COCO_SOURCES[f"{split}_{kind}"] for split in SPLITS}


def images_dir_param():
    """Where the images are: the input folder, or where images fetched from the web go."""
    if config["coco"]["source"] == "download":
        return COCO_SOURCES["images"]
    return lambda wildcards, input: input.images


def local_images():
    """The image folder as a job input, unless images are fetched from the web."""
    return (
        {}
        if config["coco"]["source"] == "download"
        else {"images": COCO_SOURCES["images"]}
    )


def task_names():
    """Every task as '<kind>-<prompt variant>', e.g. caption-tao, object-withcat."""
    return [
        f"{kind}-{prompt}"
        for kind in ("caption", "object")
        for prompt in config[kind]["prompts"]
    ]


def caption_negatives():
    """The kinds of negative the caption pairs hold: those the variants take."""
    return sorted(
        {
            variant_spec(config, "caption", p)["negatives"]
            for p in config["caption"]["prompts"]
        }
    )


def task_kind(task):
    return task.split("-", 1)[0]


def task_prompt(task):
    return task.split("-", 1)[1]


def model_names():
    """Every configured model, then each model's baselines as '<model>@<baseline>'."""
    return list(config["models"]) + [
        f"{model}@{baseline}"
        for model, entry in config["models"].items()
        for baseline in entry["baselines"]
    ]


def model_entry(model):
    """The config entry a model (or a model's baseline) runs with, the study's prompt format
    filled in where the entry sets none."""
    name, baseline = split_model_name(model)
    prompt = {key: config[key] for key in ("prompt_format", "generation_prompt")}
    return baseline_entry({**prompt, **config["models"][name]}, baseline)


def model_param(wildcards):
    """The model entry a model job computes with, its hf_id the built tiny model's directory.

    Left out, so that editing them reruns nothing: batch_size (how, not what: the jobs get it
    as a resource), baselines (other jobs) and tiny (the model's own rule, an input of the
    job). A dtype of auto is resolved by the device where the config names one (bfloat16 on
    CUDA, float32 on the CPU): the device is then a resource, and moving a model of explicit
    dtype to another device reruns nothing."""
    entry = model_entry(wildcards.model)
    kept = {
        k: v for k, v in entry.items() if k not in ("batch_size", "baselines", "tiny")
    }
    device = config["extract"]["device"]
    if kept["dtype"] == "auto" and device != "auto":
        kept["dtype"] = "bfloat16" if device == "cuda" else "float32"
    return {**kept, "hf_id": model_dir(wildcards.model)}


def extract_params():
    """What an extraction computes with, the params of the image pass and of a publication
    alike (a publication that finds nothing staged pools its task itself)."""
    return {
        "model": model_param,
        "images_dir": COCO_SOURCES["images"],
        "parts": config["extract"]["parts"],
        "shards": lambda wc: shards_of(wc.model),
        "poolings": config["extract"]["poolings"],
        "max_side": config["images"]["max_side"],
        "storage_dtype": config["extract"]["storage_dtype"],
    }


def extract_resources():
    """How an extraction job runs, the image pass's and a task's tables' alike: resources,
    since they do not change what it computes."""
    return {
        "gpu": model_gpus,
        "mem_mb": extract_mem_mb,
        "runtime": extract_runtime,
        "device": config["extract"]["device"],
        "batch_size": extract_batch_size,
        "entry_batch_size": lambda wc: model_entry(wc.model)["batch_size"],
        "chunk_samples": config["extract"]["chunk_samples"],
    }


def write_settings(params, path):
    """A model's extraction settings as JSON, written atomically: the settings job's output."""
    settings = {name: value for name, value in params.items()}
    write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n", path)


def model_gpus(wildcards):
    """The GPUs a model job holds: none on the CPU."""
    return 0 if config["extract"]["device"] == "cpu" else 1


def extract_batch_size(wildcards, attempt):
    """The model's batch size, halved on every retry of a failed extraction job."""
    return max(1, model_entry(wildcards.model)["batch_size"] // 2 ** (attempt - 1))


def task_rows(task):
    """A task's rows over both splits, as the config sizes them (sizing.task_rows)."""
    kind = task_kind(task)
    return sizing.task_rows(kind, config[kind]["prompts"][task_prompt(task)], config)


def part_rows(wildcards, tasks):
    """Rows of one extraction part of ``tasks``."""
    parts = config["extract"]["parts"]
    return sum(math.ceil(task_rows(task) / parts) for task in tasks)


def job_tasks(wildcards):
    """The tasks an extraction job pools: its own, or every task in the image pass."""
    return [wildcards.task] if "task" in wildcards.keys() else task_names()


def extract_mem_mb(wildcards, attempt):
    """An extraction job's memory: of its task's rows, or of every task's in the image pass."""
    extract = config["extract"]
    tasks = job_tasks(wildcards)
    return attempt * sizing.extract_mem_mb(
        model_entry(wildcards.model),
        part_rows(wildcards, tasks),
        extract["layers_per_shard"],
        len(extract["poolings"]),
        extract["chunk_samples"],
    )


def extract_runtime(wildcards, attempt):
    tasks = job_tasks(wildcards)
    return attempt * sizing.extract_runtime(
        model_entry(wildcards.model),
        part_rows(wildcards, tasks),
        config["extract"]["device"],
    )


def first_tokens_mem_mb(wildcards, attempt):
    weights = math.ceil(sizing.weights_mb(model_entry(wildcards.model)))
    return attempt * (sizing.BASE_MB + weights)


def probe_gpus(wildcards):
    """A GPU for the probe jobs whose fits run on one (linear, mlp), unless on the CPU."""
    on_gpu = config["probe_device"] != "cpu" and PROBES[wildcards.probe].on_device
    return 1 if on_gpu else 0


def probe_width(model):
    if model == TEXT_EMBEDDING_MODEL:
        return sizing.EMBEDDING_DIM
    return sizing.hidden_size(model_entry(model))


def probe_mem_mb(wildcards, attempt):
    layers = int(wildcards.last) - int(wildcards.first) + 1
    return attempt * sizing.probe_mem_mb(
        task_rows(wildcards.task), layers, probe_width(wildcards.model)
    )


def probe_runtime(wildcards, attempt):
    labels = 1 if task_kind(wildcards.task) == "caption" else sizing.COCO_CATEGORIES
    return attempt * sizing.probe_runtime(
        task_rows(wildcards.task),
        int(wildcards.last) - int(wildcards.first) + 1,
        probe_width(wildcards.model),
        labels * (2 if EVALUATION.control else 1),
        PROBES[wildcards.probe],
    )


def caption_pool_mem_mb(wildcards, attempt):
    """Sized by the pool's captions: COCO's counts, or the local caption files' size."""
    if config["coco"]["source"] == "download":
        names = {config["coco"][f"{split}_source"] for split in SPLITS}
        captions = sizing.coco_pool_captions(names)
    else:
        pools = {Path(COCO_SOURCES[f"{split}_pool"]) for split in SPLITS}
        size = sum(pool.stat().st_size for pool in pools if pool.exists())
        captions = sizing.captions_in_file(size)
    return attempt * sizing.caption_pairs_mem_mb(captions)


def annotations_mem_mb(*kinds):
    """For a job parsing the annotation files of ``kinds`` (instances, captions): COCO's sizes,
    or the local files'."""

    def mem_mb(wildcards, attempt):
        if config["coco"]["source"] == "download":
            names = {config["coco"][f"{split}_source"] for split in SPLITS}
            size = sum(sizing.coco_json_mb(k, n) for k in kinds for n in names)
        else:
            files = {
                Path(COCO_SOURCES[f"{split}_{k}"]) for split in SPLITS for k in kinds
            }
            size = sum(f.stat().st_size for f in files if f.exists()) / 2**20
        return attempt * sizing.json_job_mem_mb(size)

    return mem_mb


def model_dir(model):
    """A tiny model is built by the workflow; any other is loaded from its hub id or path."""
    entry = model_entry(model)
    name = split_model_name(model)[0]
    return f"resources/models/{name}" if "tiny" in entry else entry["hf_id"]


def model_input(wildcards):
    """The built tiny model's directory is a job input; hub checkpoints are not files here."""
    return (
        [model_dir(wildcards.model)] if "tiny" in model_entry(wildcards.model) else []
    )


def shards_of(model):
    """Inclusive hidden-state ranges of one model (num_layers + 1 states, embeddings first)."""
    return layer_shards(
        model_entry(model)["num_layers"] + 1, config["extract"]["layers_per_shard"]
    )


def activation_parts(wildcards):
    parts = 1 if wildcards.model == TEXT_EMBEDDING_MODEL else config["extract"]["parts"]
    return expand(
        ACTIVATIONS, model=wildcards.model, task=wildcards.task, part=range(parts)
    )


def probe_tables(template=PROBE_TABLE):
    """Every probe job's output of one kind: PROBE_TABLE or SCORE_TABLE."""
    jobs = [
        (model, task, pooling, first, last)
        for model in model_names()
        for task in task_names()
        for pooling in config["extract"]["poolings"]
        for first, last in shards_of(model)
    ]
    if config["caption"]["embedding_baseline"]:
        jobs += [
            (TEXT_EMBEDDING_MODEL, task, TEXT_EMBEDDING_POOLING, 0, 0)
            for task in task_names()
            if task_kind(task) == "caption"
        ]
    return [
        template.format(
            model=model, task=task, pooling=pooling, probe=probe, first=first, last=last
        )
        for model, task, pooling, first, last in jobs
        for probe in config["probes"]
    ]


def figure_input(wildcards):
    """A figure reads the summary or every probe table (loss curves, per-category F1)."""
    if FIGURES[wildcards.figure].input == "summary":
        return SUMMARY
    return probe_tables()


def figure_names():
    """The registered figures whose rows this config produces."""
    skip = set()
    if not EVALUATION.control:
        skip.add("selectivity")
    if not config["caption"]["embedding_baseline"] and not any(
        entry["baselines"] for entry in config["models"].values()
    ):
        skip.add("baselines")
    return [name for name in FIGURES if name not in skip]


def final_outputs():
    return (
        [SUMMARY, "results/metrics/best_layers.tsv"]
        + expand("results/first_tokens/{model}.tsv", model=config["models"])
        + expand(
            "results/figures/{figure}.{ext}",
            figure=figure_names(),
            ext=["html", "png", "svg"],
        )
        + [
            "results/tasks/negative_examples.html",
            "results/figures/negative_similarity.html",
            "results/figures/negative_similarity.png",
        ]
    )
