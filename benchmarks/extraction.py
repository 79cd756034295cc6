"""Extraction speed: vlprobe's extractor against the straightforward implementation, in one run.

    .venv/bin/python benchmarks/extraction.py [--images 64] [--threads 1] [--max-objects 3]

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
scale, plain forward passes against prefix reuse. The last two lines are
``image-heavy ratio: <b over a>`` and ``ratio: <b over a>`` for the demo's model; it exits
non-zero if the pooled values of (a) and (b) differ.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import transformers
import yaml

from vlprobe.data import build_images_table, load_image, make_demo_coco
from vlprobe.extract import POOLINGS, extract_activations
from vlprobe.models import build_tiny_model, load_model
from vlprobe.storage import read_activations
from vlprobe.tasks import build_object_rows, category_names, extraction_samples, object_task

PROMPT = "This image contains the following types of objects:"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
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
class Qwen2VL2B:
    """Cost model of Qwen2-VL-2B (NOTES-transformers.md): FLOPs of one forward pass."""

    vit_params: float = 665e6  # vision tower incl. merger
    vit_layers: int = 32
    vit_width: int = 1280
    llm_params: float = 1.31e9  # decoder without the (tied) embedding; lm_head skipped
    llm_layers: int = 28
    llm_width: int = 1536
    patches: int = 1564  # a 640x480 COCO image
    image_tokens: int = 393  # 391 merged patches + vision start/end

    def vit(self) -> float:
        attention = 4 * self.vit_layers * self.vit_width * self.patches**2  # full attention
        return 2 * self.vit_params * self.patches + attention

    def llm(self, tokens: float, context: float = 0.0) -> float:
        """``tokens`` new tokens after ``context`` cached ones (causal attention)."""
        attention = 4 * self.llm_layers * self.llm_width * tokens * (context + tokens / 2)
        return 2 * self.llm_params * tokens + attention

    def plain(self, prompt_tokens: float) -> float:
        """One sample: image and prompt in one pass."""
        return self.vit() + self.llm(self.image_tokens + prompt_tokens)

    def reuse(self, shared_tokens: float, suffix_tokens: float, prompts: float) -> float:
        """One sample's share of an image: prefix (image + shared text) once, suffixes each."""
        prefix = self.image_tokens + shared_tokens
        per_image = self.vit() + self.llm(prefix) + prompts * self.llm(suffix_tokens, prefix)
        return per_image / prompts


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
    cost = Qwen2VL2B()
    lines = [
        "FLOP-based estimate, Qwen2-VL-2B on one H100 (bf16 dense peak 989 TFLOP/s, assumed "
        f"MFU {MFU:.0%} for both paths; one 640x480 image = {cost.patches} ViT patches, "
        f"{cost.image_tokens} image tokens; ViT {cost.vit() / 1e12:.2f} TFLOP per image; "
        "lm_head skipped; CPU preprocessing assumed to keep up):",
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="vlprobe-bench-") as tmp:
        root = Path(tmp)
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
    print(f"image-heavy ratio: {heavy.ratio:.2f}")
    print(f"ratio: {demo.ratio:.2f}")
    if not (demo.identical and heavy.identical):
        raise SystemExit("pooled values differ between (a) and (b)")


if __name__ == "__main__":
    main()
