"""Qwen2.5-VL: Qwen2-VL's decoder and M-RoPE over a ViT with window attention and SwiGLU blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)

from vlprobe.models.base import merger_vit_config
from vlprobe.models.qwen2_vl import MERGE_SIZE, PATCH_SIZE, Qwen2VLAdapter

# the real vision tower attends within windows of 112 x 112 pixels, except in some blocks
WINDOW_SIZE = 112


class Qwen2_5VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL checkpoints (model_type ``qwen2_5_vl``); tiny keys as for ``qwen2_vl``.

    Positions, placeholder and prefix reuse are Qwen2-VL's: the decoder and its M-RoPE index
    are the same, only the vision tower differs.
    """

    family = "qwen2_5_vl"
    config_class = Qwen2_5_VLConfig
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = Qwen2_5_VLProcessor

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **merger_vit_config(spec, PATCH_SIZE, MERGE_SIZE),
            "window_size": WINDOW_SIZE,
            # full attention in the last block only, windows before it (as in the real model)
            "fullatt_block_indexes": [spec["vision_layers"] - 1],
        }
