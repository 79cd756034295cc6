"""Baselines: the inputs and models that make a layer's score interpretable.

A probe score means little alone (the predecessor study's object-task F1 was ~0.95 at every
layer, embeddings included). Three baselines are extracted and probed exactly like a model:

``random_init``
    The model's architecture with freshly initialised weights (a fixed seed,
    :data:`vlprobe.models.base.RANDOM_INIT_SEED`) and the checkpoint's processor: what the
    architecture and the tokenisation give for free.
``blank_image``
    The model with every image replaced by a uniform grey image of the same size (the same
    number of image tokens): what the text of the prompt alone gives.
``text_embedding``
    For caption entailment, the sentence-transformers embedding of the caption alone (one
    "layer"). The negatives are mined by that very similarity, so this is the floor a VLM
    layer must beat to show it uses the image.

A baseline of model ``m`` runs under the model name ``m@<baseline>``; the text-embedding
baseline runs under :data:`TEXT_EMBEDDING_MODEL`. Model names in the config cannot contain
``@``, so these names never clash with a configured model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from PIL import Image

from vlprobe.data import fitted_size
from vlprobe.storage import shard_path, write_activations
from vlprobe.tasks import embed_captions, read_task

MODEL_BASELINES = ("random_init", "blank_image")
TEXT_EMBEDDING_MODEL = "captions@text_embedding"
# the text-embedding baseline has one "layer" and one "pooling": the sentence model's own
TEXT_EMBEDDING_POOLING = "sentence"
# mid-grey: no edges, no colour, the mean of most normalisations
BLANK_RGB = (128, 128, 128)


def split_model_name(name: str) -> tuple[str, str | None]:
    """``"m@baseline"`` -> ``("m", "baseline")``; a configured model -> ``(name, None)``."""
    model, _, baseline = name.partition("@")
    return model, baseline or None


def baseline_entry(entry: Mapping[str, Any], baseline: str | None) -> dict[str, Any]:
    """The config entry a baseline of a model runs with: the model's, plus ``baseline``."""
    if baseline is None:
        return dict(entry)
    if baseline not in MODEL_BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; known: {list(MODEL_BASELINES)}")
    return {**entry, "baseline": baseline}


def load_blank_image(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """A uniform grey RGB image of the size :func:`~vlprobe.data.load_image` gives the image at
    ``path`` (only its header is read)."""
    with Image.open(path) as image:
        return Image.new("RGB", fitted_size(image.size, max_side), BLANK_RGB)


def write_text_embedding_activations(
    task_path: str | os.PathLike, model_spec: str, out_dir: str | os.PathLike, device: str = "auto"
) -> None:
    """Embed each caption of a caption task alone and store it as a one-layer activation table.

    Written like an extraction part (``out_dir/layers-0-0.parquet``, pooling column
    :data:`TEXT_EMBEDDING_POOLING`), so the probe job reads it like any model's activations.
    """
    task, metadata = read_task(task_path)
    if metadata["kind"] != "caption":
        raise ValueError(f"{task_path}: the text-embedding baseline needs a caption task")
    vectors = embed_captions(task["caption"].to_list(), model_spec, device=device)
    write_activations(
        shard_path(out_dir, (0, 0)),
        task["sample_id"].to_numpy(),
        [0],
        {TEXT_EMBEDDING_POOLING: vectors[:, None, :]},
        {"model": TEXT_EMBEDDING_MODEL, "embedding_model": model_spec, **metadata},
    )
