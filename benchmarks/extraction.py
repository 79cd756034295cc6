"""Extraction speed: vlprobe's extractor against the straightforward implementation, in one run.

    .venv/bin/python benchmarks/extraction.py [--images 64] [--threads 1] [--max-objects 3]
        [--all-tasks-images 32] [--case all|one-task|all-tasks]

On CPU, with the demo's object-recognition task (NoCat and WithCat prompts of the same images:
several prompts per image) and two tiny randomly initialised Qwen2-VLs built here into a
temporary directory:

  - the demo's own (``tiny-qwen2-vl`` of config/demo.yaml, as the demo workflow builds it);
  - an image-heavy one, larger, with 256 image tokens per image, so that the vision tower and
    image prefix dominate the cost as they do in real models;

it measures for each

  (a) the reference: one prompt at a time, ``output_hidden_states=True``, pooling afterwards;
  (b) vlprobe's ``extract_activations``: hook pooling, image prefix reuse, batches, chunks and
      the final Parquet files included;

checks that both give the same pooled values (max abs diff per pooling) and prints the samples/s
of both. It also prints a FLOP-based estimate of samples/s for Qwen2-VL-2B on one H100 at paper
scale, plain forward passes against prefix reuse.

The all-tasks case: every caption and object task of config/config.yaml (all prompt variants)
on ``--all-tasks-images`` real coco-mini images (../shared/coco-mini), with the image-heavy
model, extracted (c) task by task, as one job per task did before (prefix reuse within the
task), and (d) as the workflow's image pass does it now, in one pass over every task
(:func:`vlprobe.extract.extract_variants`: one vision pass and one prefix pass per image for
all of them). It prints the samples/s of both,
checks that every task's pooled values agree, and prints FLOP estimates of one image's
prompts for Qwen2-VL-2B and FastVLM-0.5B per task set.

The last lines are ``all-tasks ratio: <d over c>``, ``image-heavy ratio: <b over a>`` and
``ratio: <b over a>`` for the demo's model; it exits non-zero if pooled values differ.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import transformers
import yaml

from vlprobe.data import CocoFiles, build_images_table, load_image, make_demo_coco
from vlprobe.extract import POOLINGS, Variant, extract_activations, extract_variants
from vlprobe.extract.extractor import SHARED_RUN_MIN_TOKENS, shared_runs
from vlprobe.models import build_tiny_model, load_model
from vlprobe.models.base import shared_prefix_length
from vlprobe.storage import read_activations, shard_path
from vlprobe.tasks import (
    build_caption_pairs,
    build_object_rows,
    caption_task,
    category_names,
    extraction_samples,
    object_task,
)

PROMPT = "This image contains the following types of objects:"
ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
PAPER_CONFIG = ROOT / "config" / "config.yaml"
COCO_MINI = ROOT.parent / "shared" / "coco-mini"
DEMO_MODEL = "tiny-qwen2-vl"
# a tiny Qwen2-VL whose image prefix dominates the cost, as in the real model (vision tower 3x
# the decoder here; Qwen2-VL-2B: 2.4x on a COCO image): 256 image tokens (4 ViT patches each)
# per image against 10-20 prompt tokens
IMAGE_HEAVY = {
    "num_layers": 6,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "vision_hidden_size": 96,
    "vision_layers": 4,
    "vision_attention_heads": 4,
    "min_image_tokens": 256,
    "max_image_tokens": 256,
    "seed": 0,
}
BATCH_SIZE = 8
ROUNDS = 2
DEMO_REPEATS = 8
TOLERANCE = 1e-4  # relative to the largest pooled value
TARGET = 4.0  # the target ratio on the demo's model


def demo_samples(root: Path, n_images: int, max_objects: int = 3) -> pl.DataFrame:
    """NoCat and WithCat samples of the demo's object task over the same images."""
    files = make_demo_coco(root / "coco", n_images=n_images, seed=0, max_objects=max_objects)
    sources = {"train": files, "eval": files}
    n_eval = n_images // 4
    images, _ = build_images_table(
        sources, {"train": n_images - n_eval, "eval": n_eval}, 0, "error"
    )
    rows = build_object_rows(images, {"train": files.instances, "eval": files.instances})
    names = category_names(files.instances)
    nocat, _ = object_task(rows, "nocat", PROMPT, "none", seed=0, names=names)
    withcat, _ = object_task(rows, "withcat", f"{PROMPT} {{categories}}", "others", 0, names)
    withcat = withcat.with_columns(pl.col("sample_id") + nocat.height)
    task = pl.concat([nocat, withcat])
    return extraction_samples(task, images, files.images_dir, 0, 1)


def reference_extraction(model, samples: pl.DataFrame, poolings) -> dict[str, np.ndarray]:
    """(a) One prompt at a time: the processor, a forward pass with output_hidden_states=True,
    pooling each hidden state afterwards."""
    out = {name: [] for name in poolings}
    image_token_id = model.tokenizer.convert_tokens_to_ids(model.image_token)
    with torch.inference_mode():
        for path, text in samples.select("image_path", "text").iter_rows():
            inputs = model.inputs([load_image(path)], [text])
            states = model.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states
            hidden = torch.stack([state[0] for state in states]).float()  # [states, tokens, h]
            image = inputs["input_ids"][0] == image_token_id
            pooled = {
                "last": hidden[:, -1],
                "first": hidden[:, 0],
                "mean": hidden.mean(dim=1),
                "max": hidden.amax(dim=1),
                "image_mean": hidden[:, image].mean(dim=1),
                "text_mean": hidden[:, ~image].mean(dim=1),
            }
            for name in poolings:
                out[name].append(pooled[name].numpy())
    return {name: np.stack(values) for name, values in out.items()}


def vlprobe_extraction(model, samples: pl.DataFrame, poolings, out_dir: Path, batch_size: int):
    """(b) vlprobe's extractor, writing and reading back its activation table."""
    shard = (0, model.num_layers)
    path = out_dir / "layers.parquet"
    extract_activations(
        model, samples, poolings, [shard], [path], {"task": "object"}, batch_size=batch_size
    )
    return {name: read_activations([path], name)[2] for name in poolings}


# ---------------------------------------------------------------------------- H100 estimate


@dataclass(frozen=True)
class VlmCost:
    """Cost model of one VLM: FLOPs of its forward passes (lm_head skipped)."""

    name: str
    vision_flops: float  # one image through the vision tower and projector
    image_tokens: int  # what the decoder sees of one image
    llm_params: float  # decoder without the embedding
    llm_layers: int
    llm_width: int

    def llm(self, tokens: float, context: float = 0.0) -> float:
        """``tokens`` new tokens after ``context`` cached ones (causal attention)."""
        attention = 4 * self.llm_layers * self.llm_width * tokens * (context + tokens / 2)
        return 2 * self.llm_params * tokens + attention

    def plain(self, prompt_tokens: float) -> float:
        """One sample: image and prompt in one pass."""
        return self.vision_flops + self.llm(self.image_tokens + prompt_tokens)

    def image_passes(self, shared_tokens: float = 0.0) -> float:
        """The vision pass and the prefix pass (image block and shared text) of one image."""
        return self.vision_flops + self.llm(self.image_tokens + shared_tokens)

    def reuse(self, shared_tokens: float, suffix_tokens: float, prompts: float) -> float:
        """One sample's share of an image: prefix (image + shared text) once, suffixes each."""
        prefix = self.image_tokens + shared_tokens
        per_image = self.image_passes(shared_tokens) + prompts * self.llm(suffix_tokens, prefix)
        return per_image / prompts


def qwen2_vl_2b() -> VlmCost:
    """Qwen2-VL-2B (its config.json; NOTES-transformers.md): a 640x480 COCO image is 1,564 ViT
    patches of 14 pixels (32 layers, width 1280, 665M parameters with the merger, full
    attention), merged 2x2 into 391 tokens plus vision start and end."""
    patches, vit_params, vit_layers, vit_width = 1564, 665e6, 32, 1280
    vit = 2 * vit_params * patches + 4 * vit_layers * vit_width * patches**2
    return VlmCost("Qwen2-VL-2B", vit, 393, 1.31e9, 28, 1536)


def fastvlm_0_5b() -> VlmCost:
    """FastVLM-0.5B (its config.json): FastViTHD (timm's fastvit_mci3) on a 1024x1024 image,
    0.473 TFLOP as torch.utils.flop_counter counts it on timm 1.0.31, 256 tokens of width 3072
    through a two-layer projector into Qwen2-0.5B (24 layers, width 896, intermediate 4864,
    14 heads, 2 KV heads: 358M parameters without the embedding)."""
    projector = 2 * 256 * (3072 * 896 + 896 * 896)
    return VlmCost("FastVLM-0.5B", 0.473e12 + projector, 256, 0.358e9, 24, 896)


# (task, prompts per image, prompt tokens, tokens all prompts of an image share)
PAPER_TASKS = [
    ("object NoCat", 1.0, 10.0, 0.0),
    # COCO 2017 has 2.9 categories per image: |K|+1 = 3.9 prompts, each listing ~2.2 of
    # them at ~3 tokens per name and separator; the 10-token template is shared
    ("object WithCat", 3.9, 10.0 + 2.2 * 3.0, 9.0),
    # Tao et al.: 5 positive + 5 hard-negative captions per image, ~13-token captions in a
    # 12-token template of which 4 tokens precede the caption
    ("caption (Tao, 5+5)", 10.0, 25.0, 4.0),
    ("caption (compact, 1+1)", 2.0, 25.0, 4.0),
]
H100_BF16 = 989e12  # dense peak FLOP/s
MFU = 0.40  # assumed model FLOP utilisation, both paths


def h100_estimate() -> list[str]:
    cost = qwen2_vl_2b()
    lines = [
        "FLOP-based estimate, Qwen2-VL-2B on one H100 (bf16 dense peak 989 TFLOP/s, assumed "
        f"MFU {MFU:.0%} for both paths; one 640x480 image = {cost.image_tokens} image tokens; "
        f"vision {cost.vision_flops / 1e12:.2f} TFLOP per image; lm_head skipped; CPU "
        "preprocessing assumed to keep up):",
        f"  {'task':<24}{'prompts/img':>12}{'tok/prompt':>11}{'plain':>12}{'reuse':>12}{'x':>7}",
    ]
    for name, prompts, tokens, shared in PAPER_TASKS:
        plain = MFU * H100_BF16 / cost.plain(tokens)
        reuse = MFU * H100_BF16 / cost.reuse(shared, tokens - shared, prompts)
        lines.append(
            f"  {name:<24}{prompts:>12.1f}{tokens:>11.0f}{plain:>10.0f}/s{reuse:>10.0f}/s"
            f"{reuse / plain:>7.1f}"
        )
    return lines


# real tokenizers (Qwen2's BPE) spend about 1.3 tokens per English word; the tiny models'
# locally built vocabulary spends more, so the estimate counts words
TOKENS_PER_WORD = 1.3


def image_prompts(tasks: dict[str, pl.DataFrame]) -> list[dict[str, list[list[int]]]]:
    """Per image of a task set, per task its prompts as word ids (the words stand for
    tokens in the estimate)."""
    vocabulary: dict[str, int] = {}
    images: dict[str, dict[str, list[list[int]]]] = {}
    for task, samples in tasks.items():
        for path, text in samples.select("image_path", "text").iter_rows():
            words = [vocabulary.setdefault(word, len(vocabulary)) for word in text.split(" ")]
            images.setdefault(path, {}).setdefault(task, []).append(words)
    return list(images.values())


def image_flops(cost: VlmCost, prompts: dict[str, list[list[int]]]) -> tuple[float, ...]:
    """FLOPs of one image's prompts (per task, word ids): without reuse, with prefix reuse
    task by task (each task's prefix holds the words all its prompts start with), and in one
    image pass for every task (shared runs after the image prefix passed once, as the
    extractor does)."""
    tokens = TOKENS_PER_WORD

    def reused(groups: list[list[list[int]]]) -> float:
        """Prefix reuse over prompts ``groups``: one image pass per group."""
        total = 0.0
        for group in groups:
            shared = shared_prefix_length(group)
            context = cost.image_tokens + shared * tokens
            total += cost.image_passes(shared * tokens)
            rests = [words[shared:] for words in group]
            runs = shared_runs(rests, math.ceil(SHARED_RUN_MIN_TOKENS / tokens))
            grouped = {k for _, members in runs for k in members}
            for length, members in runs:
                total += cost.llm(length * tokens, context)
                total += sum(
                    cost.llm((len(rests[k]) - length) * tokens, context + length * tokens)
                    for k in members
                )
            total += sum(
                cost.llm(len(rest) * tokens, context)
                for k, rest in enumerate(rests)
                if k not in grouped
            )
        return total

    every = [words for group in prompts.values() for words in group]
    plain = sum(cost.plain(len(words) * tokens) for words in every)
    return plain, reused(list(prompts.values())), reused([every])


def task_set_estimate(tasks: dict[str, pl.DataFrame]) -> list[str]:
    """Per image of a task set (``tasks``: each one's extraction samples), TFLOP without
    reuse, with prefix reuse task by task (one vision and prefix pass per task), and with one
    image pass for every task (the workflow)."""
    images = image_prompts(tasks)
    n_prompts = sum(len(g) for prompts in images for g in prompts.values()) / len(images)
    n_words = np.mean([len(w) for prompts in images for g in prompts.values() for w in g])
    lines = [
        f"FLOP estimate of one image's prompts in the task set above ({len(tasks)} tasks, "
        f"{n_prompts:.1f} prompts of {n_words * TOKENS_PER_WORD:.0f} tokens on average at "
        f"{TOKENS_PER_WORD} tokens per word), TFLOP per image: vision tower, image prefix, then "
        "all prompts without reuse, with prefix reuse task by task, and in one image pass for "
        "every task (with its shared runs):",
        f"  {'model':<14}{'vision':>8}{'prefix':>8}{'no reuse':>10}{'per task':>10}"
        f"{'one pass':>10}{'x':>6}",
    ]
    for cost in (qwen2_vl_2b(), fastvlm_0_5b()):
        plain, per_task, shared = np.mean([image_flops(cost, p) for p in images], axis=0)
        lines.append(
            f"  {cost.name:<14}{cost.vision_flops / 1e12:>8.2f}"
            f"{cost.llm(cost.image_tokens) / 1e12:>8.2f}{plain / 1e12:>10.1f}"
            f"{per_task / 1e12:>10.1f}{shared / 1e12:>10.1f}{per_task / shared:>6.1f}"
        )
    return lines


# ---------------------------------------------------------------------------- all tasks


def paper_tasks(root: Path, n_images: int) -> tuple[dict[str, pl.DataFrame], CocoFiles]:
    """Every caption and object task of config/config.yaml on ``n_images`` coco-mini images:
    per task its extraction samples. Hard negatives come from the sample's own captions (the
    pool's size does not change the extraction's cost), embedded with the packaged MiniLM."""
    config = yaml.safe_load(PAPER_CONFIG.read_text())
    files = CocoFiles.in_directory(COCO_MINI)
    n_eval = n_images // 4
    images, _ = build_images_table(
        {"train": files, "eval": files}, {"train": n_images - n_eval, "eval": n_eval}, 0, "error"
    )
    caption = config["caption"]
    splits = {"train": files.captions, "eval": files.captions}
    pairs = build_caption_pairs(
        images,
        splits,
        splits,
        caption["positives_per_image"],
        caption["candidates_per_positive"],
        yaml.safe_load(DEMO_CONFIG.read_text())["caption"]["embedding_model"],
        caption["seed"],
    )
    tables = {
        f"caption-{name}": caption_task(pairs, name, template)[0]
        for name, template in caption["prompts"].items()
    }
    rows = build_object_rows(images, {"train": files.instances, "eval": files.instances})
    names = category_names(files.instances)
    for name, entry in config["object"]["prompts"].items():
        tables[f"object-{name}"] = object_task(
            rows,
            name,
            entry["template"],
            entry["categories"],
            config["object"]["seed"],
            names,
            entry.get("absent_per_image"),
        )[0]
    return {
        task: extraction_samples(table, images, files.images_dir, 0, 1)
        for task, table in tables.items()
    }, files


def all_tasks_case(root: Path, n_images: int) -> Measured:
    """(c) every task by itself against (d) one pass over all tasks, on the image-heavy model."""
    tasks, _ = paper_tasks(root, n_images)
    n_samples = sum(samples.height for samples in tasks.values())
    build_tiny_model("qwen2_vl", root / "model", IMAGE_HEAVY)
    entry = {"family": "qwen2_vl", "hf_id": str(root / "model"), "dtype": "float32"}
    model = load_model("image-heavy", {**entry, "num_layers": IMAGE_HEAVY["num_layers"]})
    poolings = list(POOLINGS)
    shards = [(0, model.num_layers)]
    print(
        f"all tasks: the {len(tasks)} caption and object tasks of config/config.yaml on "
        f"{n_images} coco-mini images: {n_samples} samples "
        f"({n_samples / n_images:.1f} prompts per image); image-heavy-qwen2-vl, "
        f"batch size {BATCH_SIZE}"
    )
    for task, samples in tasks.items():
        tokens = np.mean([len(model.tokenizer(text)["input_ids"]) for text in samples["text"]])
        print(f"  {task:<26}{samples.height / n_images:>6.1f} prompts/image, {tokens:.0f} tokens")

    def per_task() -> None:
        for task, samples in tasks.items():
            paths = [shard_path(root / "c" / task, shard) for shard in shards]
            extract_activations(model, samples, poolings, shards, paths, {}, BATCH_SIZE)

    def one_pass() -> None:  # as the workflow's image pass runs it
        variants = [
            Variant(samples, [shard_path(root / "d" / task, shard) for shard in shards], {})
            for task, samples in tasks.items()
        ]
        extract_variants(model, variants, poolings, shards, BATCH_SIZE)

    wall = {}
    for which, run in (("a", per_task), ("b", one_pass)):
        started = time.perf_counter()
        run()
        wall[which] = time.perf_counter() - started
    worst = 0.0
    for task in tasks:
        for name in poolings:
            c, d = (
                read_activations([shard_path(root / which / task, shards[0])], name)[2]
                for which in "cd"
            )
            worst = max(worst, float(np.abs(c - d).max()) / float(np.abs(c).max()))
    measured = Measured(n_samples, wall, worst)
    print(
        f"  (c) task by task, prefix reuse within each task: {wall['a']:.1f} s, "
        f"{measured.rate('a'):.2f} samples/s"
    )
    print(
        f"  (d) one image pass over every task (one vision and prefix pass per image): "
        f"{wall['b']:.1f} s, {measured.rate('b'):.2f} samples/s"
    )
    # (c) pays the images' part once per task, (d) once: the two timings split the cost
    image_part = (wall["a"] - wall["b"]) / (len(tasks) - 1)
    prompts_part = wall["b"] - image_part
    print(
        f"  implied split of (d): the images' vision and prefix passes {image_part:.1f} s, the "
        f"prompts' own tokens {prompts_part:.1f} s (this tiny model's tokenizer spends about "
        f"twice a real one's tokens per prompt); so (c) over (d) is at most "
        f"{len(tasks)}x for image-bound models and {(wall['a'] / prompts_part):.1f}x even with "
        "free images here, against the FLOP estimate below for the real models"
    )
    print(f"  worst relative difference over tasks and poolings: {worst:.1e}")
    print("  pooled values identical within tolerance:", "yes" if measured.identical else "NO")
    for line in task_set_estimate(tasks):
        print(line)
    return measured


# ---------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Measured:
    """Both extractions of one model over the same samples."""

    samples: int
    wall: dict[str, float]
    worst_relative_diff: float

    def rate(self, which: str) -> float:
        return self.samples / self.wall[which]

    @property
    def identical(self) -> bool:
        return self.worst_relative_diff < TOLERANCE

    @property
    def ratio(self) -> float:
        return self.rate("b") / self.rate("a")


def demo_model() -> tuple[dict, int]:
    """The demo's tiny Qwen2-VL as config/demo.yaml builds it: its tiny spec and batch size."""
    entry = yaml.safe_load(DEMO_CONFIG.read_text())["models"][DEMO_MODEL]
    return {**entry["tiny"], "num_layers": entry["num_layers"]}, entry["batch_size"]


def measure(
    label: str, tiny: dict, batch_size: int, samples: pl.DataFrame, root: Path, repeats: int
) -> Measured:
    """Build ``tiny``, run (a) and (b) on ``samples`` ``repeats`` times and print what they
    gave."""
    build_tiny_model("qwen2_vl", root / "model", tiny)
    entry = {"family": "qwen2_vl", "hf_id": str(root / "model"), "dtype": "float32"}
    model = load_model(label, {**entry, "num_layers": tiny["num_layers"]})
    poolings = list(POOLINGS)
    image_pad = model.tokenizer.convert_tokens_to_ids(model.image_token)
    image_tokens = [
        int((model.inputs([load_image(path)], [""])["input_ids"] == image_pad).sum())
        for path in samples["image_path"].unique().to_list()
    ]
    print(
        f"{label}: {', '.join(f'{key}={value}' for key, value in tiny.items())} "
        f"({model.model.num_parameters() / 1e6:.2f}M parameters); {min(image_tokens)}-"
        f"{max(image_tokens)} image tokens per image; {model.num_layers + 1} hidden states; "
        f"vlprobe batch size {batch_size}"
    )

    # warm-up, not timed: first calls allocate and initialise
    reference_extraction(model, samples.head(2), poolings)
    vlprobe_extraction(model, samples.head(2), poolings, root / "warm", batch_size)

    # the images in ROUNDS groups, each measured with (a) and (b) in alternating order, so
    # that a busy machine's changing load falls on both alike; all of it ``repeats`` times
    paths = samples["image_path"].unique(maintain_order=True).to_list()
    wall = {"a": 0.0, "b": 0.0}
    cpu = {"a": 0.0, "b": 0.0}
    parts: dict[str, list[dict[str, np.ndarray]]] = {"a": [], "b": []}
    for repeat, round_ in itertools.product(range(repeats), range(ROUNDS)):
        group = samples.filter(pl.col("image_path").is_in(paths[round_::ROUNDS]))
        runs = {
            "a": lambda group=group: reference_extraction(model, group, poolings),
            "b": lambda group=group, k=round_: vlprobe_extraction(
                model, group, poolings, root / f"out-{k}", batch_size
            ),
        }
        for which in "ab" if (repeat + round_) % 2 == 0 else "ba":
            started_wall, started_cpu = time.perf_counter(), time.process_time()
            pooled = runs[which]()
            wall[which] += time.perf_counter() - started_wall
            cpu[which] += time.process_time() - started_cpu
            if repeat == 0:
                parts[which].append(pooled)
    expected, actual = (
        {name: np.concatenate([part[name] for part in parts[which]]) for name in poolings}
        for which in ("a", "b")
    )
    worst = 0.0
    diffs = []
    for name in poolings:
        diff = float(np.abs(actual[name] - expected[name]).max())
        worst = max(worst, diff / float(np.abs(expected[name]).max()))
        diffs.append(f"{name} {diff:.1e}")
    measured = Measured(samples.height * repeats, wall, worst)
    print(
        f"  (a) reference, one prompt at a time, output_hidden_states=True: {wall['a']:.1f} s, "
        f"{measured.rate('a'):.2f} samples/s (CPU time {cpu['a']:.1f} s)"
    )
    print(
        f"  (b) vlprobe extractor (hook pooling, image prefix reuse, batches, files): "
        f"{wall['b']:.1f} s, {measured.rate('b'):.2f} samples/s (CPU time {cpu['b']:.1f} s)"
    )
    print(f"  max abs diff per pooling: {', '.join(diffs)}")
    print("  pooled values identical within tolerance:", "yes" if measured.identical else "NO")
    print(
        f"  {label}: (b) over (a) {measured.ratio:.2f}x wall, {cpu['a'] / cpu['b']:.2f}x CPU time"
    )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=64, help="demo images (default 64, as in the demo)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--max-objects",
        type=int,
        default=3,
        help="objects per demo image: 1 to this many (default 3, as in the demo; COCO images "
        "have 2.9 categories on average, i.e. about 5 here)",
    )
    parser.add_argument(
        "--all-tasks-images", type=int, default=32, help="coco-mini images of the all-tasks case"
    )
    parser.add_argument(
        "--case",
        choices=["all", "one-task", "all-tasks"],
        default="all",
        help="one-task: (a) against (b) on the demo's object task; all-tasks: (c) against (d)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.disable_progress_bar()

    results: list[tuple[str, Measured]] = []
    with tempfile.TemporaryDirectory(prefix="vlprobe-bench-") as tmp:
        root = Path(tmp)
        if args.case in ("all", "all-tasks"):
            results.append(("all-tasks", all_tasks_case(root / "all-tasks", args.all_tasks_images)))
            print(
                f"target: (d) at least {TARGET:.0f}x (c) with identical pooled values: "
                + (
                    "met"
                    if results[-1][1].ratio >= TARGET and results[-1][1].identical
                    else "NOT met"
                )
            )
        if args.case in ("all", "one-task"):
            results += one_task_case(root, args)
    for label, measured in results:
        print(f"{label} ratio: {measured.ratio:.2f}" if label else f"ratio: {measured.ratio:.2f}")
    if not all(measured.identical for _, measured in results):
        raise SystemExit("pooled values differ")


def one_task_case(root: Path, args: argparse.Namespace) -> list[tuple[str, Measured]]:
    """(a) one prompt at a time against (b) vlprobe's extractor, on the demo's object task."""
    samples = demo_samples(root, args.images, args.max_objects)
    n_images = samples["image_path"].n_unique()
    prompts_per_image = samples.height / n_images
    print(
        f"task: demo object recognition, NoCat + WithCat prompts: {samples.height} samples "
        f"of {n_images} images ({prompts_per_image:.2f} prompts per image; demo images with "
        f"1 to {args.max_objects} objects); poolings {', '.join(POOLINGS)}; CPU, "
        f"{args.threads} thread(s)"
    )
    demo_tiny, demo_batch_size = demo_model()
    # the demo's model is fast: repeated so that its timings are as long as the other's
    demo = measure(DEMO_MODEL, demo_tiny, demo_batch_size, samples, root / "demo", DEMO_REPEATS)
    heavy = measure("image-heavy-qwen2-vl", IMAGE_HEAVY, BATCH_SIZE, samples, root / "heavy", 1)
    print(
        f"bound: where the vision tower and image prefix dominate (image-heavy-qwen2-vl, as in "
        f"real models), one pass per image against one per prompt gives at most about "
        f"{prompts_per_image:.2f}x (prompts per image); it reaches "
        f"{heavy.ratio / prompts_per_image:.0%} of that. {DEMO_MODEL} goes past it because the "
        f"reference's fixed cost per call (processor, Python, small kernels) weighs more there "
        f"and vlprobe's batches spread it"
    )
    for line in h100_estimate():
        print(line)
    print(
        f"target: (b) at least {TARGET:.0f}x (a) on {DEMO_MODEL} with identical pooled values: "
        + ("met" if demo.ratio >= TARGET and demo.identical else "NOT met")
    )
    return [("image-heavy", heavy), ("", demo)]


if __name__ == "__main__":
    main()
