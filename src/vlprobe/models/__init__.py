"""Model registry: one adapter class per family, a loader for config entries, tiny models.

A config entry (``models:`` in config.yaml) names a ``family``; :data:`FAMILIES` maps it to the
adapter class that knows the family's processor, image placeholder and decoder layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from vlprobe.models.base import LoadedVLM, ModelError
from vlprobe.models.gemma3 import Gemma3Adapter
from vlprobe.models.idefics3 import Idefics3Adapter
from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.qwen2_vl import Qwen2VLAdapter

FAMILIES: dict[str, type[LoadedVLM]] = {
    adapter.family: adapter
    for adapter in (Qwen2VLAdapter, LlavaAdapter, Idefics3Adapter, Gemma3Adapter)
}

__all__ = [
    "FAMILIES",
    "LoadedVLM",
    "ModelError",
    "build_tiny_model",
    "family_adapter",
    "load_model",
]


def family_adapter(family: str, name: str | None = None) -> type[LoadedVLM]:
    """The adapter class of a family; an unknown family is named in a one-line error."""
    if family not in FAMILIES:
        subject = f"model {name!r}: " if name else ""
        raise ModelError(
            f"{subject}unknown family {family!r}; supported families: {', '.join(FAMILIES)}"
        )
    return FAMILIES[family]


def load_model(
    name: str, entry: Mapping[str, Any], device: str | torch.device = "cpu"
) -> LoadedVLM:
    """Load the model of config entry ``name`` onto ``device``.

    ``entry`` keys: family, hf_id (hub id or local directory), revision, dtype, num_layers
    (checked against the checkpoint), attn_implementation (default sdpa), trust_remote_code.
    """
    return family_adapter(entry["family"], name).load(name, entry, device=device)


def build_tiny_model(family: str, out_dir: str | os.PathLike, tiny: Mapping[str, Any]) -> None:
    """Build a tiny randomly initialised model of a family's real class, with its processor.

    The tokenizer is a byte-level BPE trained offline on a built-in corpus and carries the
    family's special tokens. Model and processor are saved with ``save_pretrained`` into
    ``out_dir`` (written whole or not at all), so :func:`load_model` reads it like a checkpoint.

    ``tiny`` keys (defaults in brackets): num_layers (required), hidden_size [64], seed [0],
    num_attention_heads [4], num_key_value_heads [2], intermediate_size [2 * hidden_size],
    vocab_size [1000, an upper bound], vision_hidden_size [32], vision_layers [2],
    vision_attention_heads [2]; and per family: qwen2_vl min_image_tokens [16],
    max_image_tokens [64]; llava image_size [56]; idefics3 image_size [64]; gemma3
    image_size [64], image_tokens [16].
    """
    family_adapter(family).build_tiny(out_dir, tiny)
