"""What a job holds, estimated from the config alone: the memory and time the rules declare.

The workflow plans before any job runs, so these figures come from the config's numbers (images,
rows per image, layers per shard, hidden size, batch size), never from files. Each estimate is
an upper bound sized by the measurements of ``benchmarks/paper_scale.py`` (its coefficients
are the constants below, each with where it comes from), so that ``snakemake --resources
mem_mb=<this box>`` never runs more jobs at once than fit, and the SLURM profile needs no
hand-sized numbers. Torch-free: the workflow imports it while planning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vlprobe.tasks import SCORE_BUDGET

MB = 2**20
FLOAT32 = 4

# COCO 2017 (instances_train2017 + val2017): the mean number of distinct categories annotated
# per image, over images with at least one (117,266 + 4,952 images); WithCat has one row per
# present category plus the full list, the statement task one per present and absent one.
COCO_CATEGORIES_PER_IMAGE = 2.9
COCO_CATEGORIES = 80
# captions in COCO's caption files, by split name: the hard-negative pool's size
COCO_CAPTIONS = {"train2017": 591_753, "val2017": 25_014, "train2014": 414_113, "val2014": 202_654}
# COCO's annotation files (MB), by name: what the data and task jobs parse
COCO_JSON_MB = {
    "instances_train2017": 448,
    "captions_train2017": 92,
    "instances_val2017": 20,
    "captions_val2017": 4,
    "instances_train2014": 332,
    "captions_train2014": 66,
    "instances_val2014": 160,
    "captions_val2014": 32,
}
# parsed JSON in Python holds about this many times its file's size (measured: 4.4 for COCO's
# captions; instances, mostly polygon coordinates, take more)
JSON_PARSE_FACTOR = 8
# a sentence-transformers model's vectors: all-mpnet-base-v2 has 768, the larger ones 1024
EMBEDDING_DIM = 1024
# what any job's interpreter holds before its data: Python, torch, polars, pyarrow
BASE_MB = 1500
# a probe job's peak: about PROBE_BASE_MB plus PROBE_FEATURE_COPIES times its features in float32
# (benchmarks/paper_scale.py, every run from 4,400 to the full 220,000 caption rows of a 4-layer
# Qwen2-VL-2B shard, linear and logreg: at most 2,500 MB + 5,400 MB per 1e9 values; the full
# caption shard peaked at 7.95 GB): the features are read once into split order, and logreg
# standardises a group of layers at a time
PROBE_BASE_MB = 2500
PROBE_FEATURE_COPIES = 1.42
# hidden size assumed for a hub model whose entry states none (a 7B-class model)
DEFAULT_HIDDEN_SIZE = 4096
# vocabulary rows of the embedding and output matrices, for the weight estimate (Qwen2's 151,936
# rounded up; most VLM vocabularies are smaller)
VOCAB_ROWS = 2 * 152_000
VISION_TOWER_PARAMS = 700e6  # a ViT-L/SigLIP-so400m tower with its projector, rounded up
DTYPE_BYTES = {"float32": 4, "auto": 4, "bfloat16": 2, "float16": 2}


def rows_per_image(kind: str, entry: Mapping[str, Any] | str, caption: Mapping[str, Any]) -> float:
    """Task rows per image: caption pairs, or an object variant's rows (COCO's mean)."""
    if kind == "caption":
        return 2 * caption["positives_per_image"]  # each positive with one negative
    categories = entry.get("categories", "none") if isinstance(entry, Mapping) else "none"
    if categories == "others":
        return COCO_CATEGORIES_PER_IMAGE + 1
    if categories == "self":
        absent = entry.get("absent_per_image")
        if absent is None:
            return COCO_CATEGORIES
        return COCO_CATEGORIES_PER_IMAGE + absent
    return 1


def task_rows(kind: str, entry: Mapping[str, Any] | str, config: Mapping[str, Any]) -> int:
    """The rows of one task over both splits."""
    images = config["coco"]["n_train_images"] + config["coco"]["n_eval_images"]
    return math.ceil(images * rows_per_image(kind, entry, config["caption"]))


def hidden_size(entry: Mapping[str, Any]) -> int:
    """A model entry's hidden size: stated, a tiny model's, or a 7B-class model's."""
    if "hidden_size" in entry:
        return entry["hidden_size"]
    if "tiny" in entry:
        return entry["tiny"]["hidden_size"]
    return DEFAULT_HIDDEN_SIZE


def weights_mb(entry: Mapping[str, Any]) -> float:
    """An upper estimate of a model's weights in memory, from its depth and width: decoder
    layers (16 h^2 each: attention plus a gated MLP of up to 4.7 h), untied vocabulary
    matrices and a large vision tower."""
    if "tiny" in entry:
        return 50
    width = hidden_size(entry)
    params = 16 * entry["num_layers"] * width**2 + VOCAB_ROWS * width + VISION_TOWER_PARAMS
    return params * DTYPE_BYTES[entry.get("dtype", "auto")] / MB


def probe_mem_mb(rows: int, layers: int, width: int) -> int:
    """A probe job's peak memory: its layer-shard's features of every row, held a few times."""
    return math.ceil(PROBE_BASE_MB + PROBE_FEATURE_COPIES * rows * layers * width * FLOAT32 / MB)


def extract_mem_mb(
    entry: Mapping[str, Any],
    rows: int,
    layers_per_shard: int,
    poolings: int,
    chunk_samples: int,
) -> int:
    """An extraction job's peak host memory: the weights (loaded on the host first), the
    pooled values of the chunk being computed (every hidden state) and of one layer-shard of
    every sample of the part as it is written (float32, and its Arrow copy)."""
    states = entry["num_layers"] + 1
    width = hidden_size(entry)
    chunk = chunk_samples * states * width * poolings * FLOAT32
    shard = 2 * rows * layers_per_shard * width * poolings * FLOAT32
    return math.ceil(BASE_MB + weights_mb(entry) + (chunk + shard) / MB)


def caption_pairs_mem_mb(pool_captions: int) -> int:
    """The caption pairs' peak memory: the pool's embeddings, a slice's similarity scores
    against the pool (tasks.SCORE_BUDGET floats), and the pool's caption files parsed."""
    embeddings = pool_captions * EMBEDDING_DIM * FLOAT32
    scores = SCORE_BUDGET * FLOAT32 * 2  # the scores and the candidates' gathered copy
    parsed = pool_captions * 600  # a caption's dict, strings and ids in Python
    return math.ceil(BASE_MB + (embeddings + scores + parsed) / MB)


def coco_json_mb(kind: str, split_name: str) -> int:
    """The size of COCO's ``<kind>_<split_name>.json`` (the largest one's for other names)."""
    return COCO_JSON_MB.get(f"{kind}_{split_name}", max(COCO_JSON_MB.values()))


def json_job_mem_mb(json_mb: float) -> int:
    """A job that parses COCO annotation files of ``json_mb`` in all."""
    return math.ceil(BASE_MB + JSON_PARSE_FACTOR * json_mb)


def coco_pool_captions(split_names: set[str]) -> int:
    """The captions of COCO's caption files of these splits (e.g. train2017)."""
    return sum(COCO_CAPTIONS.get(name, max(COCO_CAPTIONS.values())) for name in split_names)


def captions_in_file(size_bytes: int) -> int:
    """About the captions of a COCO-style caption file of ``size_bytes`` (COCO's JSON spends
    about 150 bytes on each)."""
    return math.ceil(size_bytes / 150)


# Time. A job's runtime (minutes) is declared as twice the estimate, at least MIN_RUNTIME:
# a scheduler kills a job at its limit, while finishing early costs nothing.
MIN_RUNTIME = 10
# probe fits on the CPU, fitted to benchmarks/paper_scale.py's runs (4-layer shards of width
# 1536, 2 threads, CPU seconds): mini-batch fits cost this much per value (row x layer x width
# x label column) and epoch and fit, plus a fixed cost per mini-batch (caption/linear at 4,400
# rows: 63 s; object/linear at 1,100 rows: 100 s); a logreg fit this much per value in all
# (object at 22,000 rows: 570 s; caption at 220,000 rows: 76 s)
MINIBATCH_SECONDS_PER_VALUE = 5.3e-10
MINIBATCH_SECONDS = 0.023
LOGREG_SECONDS_PER_VALUE = 2.8e-8
# a model's forward pass: an achievable rate in bfloat16 on one data-centre GPU (an A100 or
# H100 at about a third of its peak), and on the cores of a CPU job; tokens per sample: an
# image's tokens at COCO resolution plus its prompt, rounded up (Qwen2-VL: about 400)
MODEL_FLOPS = {"cuda": 100e12, "cpu": 50e9}
TOKENS_PER_SAMPLE = 1000


def runtime_minutes(seconds: float) -> int:
    """What a job declares for an estimate of ``seconds``."""
    return max(MIN_RUNTIME, math.ceil(2 * seconds / 60))


def probe_runtime(rows: int, layers: int, width: int, labels: int, settings: Any) -> int:
    """A probe job's runtime on the CPU for its probe ``settings`` (vlprobe.settings): every
    seed's fit (one for logreg), each with ``labels`` label columns (real and control side by
    side) over ``rows`` x ``layers`` x ``width`` features, every epoch run."""
    values = rows * layers * width * labels
    if settings.seed_independent:
        return runtime_minutes(LOGREG_SECONDS_PER_VALUE * values)
    epochs = settings.epochs * len(settings.seeds)
    batches = math.ceil(rows / settings.batch_size) * epochs
    return runtime_minutes(
        MINIBATCH_SECONDS_PER_VALUE * values * epochs + MINIBATCH_SECONDS * batches
    )


def extract_runtime(entry: Mapping[str, Any], rows: int, device: str) -> int:
    """An extraction job's runtime: two FLOPs per weight per token of every sample (prefix
    reuse only shortens it), on the GPU unless the config says cpu."""
    params = weights_mb(entry) * MB / DTYPE_BYTES[entry.get("dtype", "auto")]
    flops = 2 * params * TOKENS_PER_SAMPLE * rows
    return runtime_minutes(flops / MODEL_FLOPS["cpu" if device == "cpu" else "cuda"])
