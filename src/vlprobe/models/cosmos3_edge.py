"""Cosmos3 Edge: a SigLIP2 encoder (native aspect ratio), a 2 x 2 patch-merging MLP projector
and a Llama-style decoder with Qwen2-VL's M-RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Cosmos3EdgeConfig,
    Cosmos3EdgeForConditionalGeneration,
    Cosmos3EdgeImageProcessor,
    Cosmos3EdgeProcessor,
    Cosmos3EdgeVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.qwen2_vl import Qwen2VLAdapter

PATCH_SIZE = 16  # one image token per 32 x 32 pixels
MERGE_SIZE = 2


class Cosmos3EdgeAdapter(Qwen2VLAdapter):
    """Cosmos3 Edge checkpoints (model_type ``cosmos3_edge``); Qwen2-VL's placeholder tokens and
    M-RoPE (the model's ``get_rope_index`` gives a reused prefix's positions), so only the tiny
    model differs. The tiny tokenizer's tokens are Qwen2-VL's, which the processor defaults to
    (the checkpoint's tokenizer was not read here).

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64), as for qwen2_vl.
    """

    family = "cosmos3_edge"
    config_class = Cosmos3EdgeConfig
    model_class = Cosmos3EdgeForConditionalGeneration
    processor_class = Cosmos3EdgeProcessor
    video_processor_class = Cosmos3EdgeVideoProcessor
    # the checkpoint's template is not available offline: tiny models run in raw format only
    tiny_chat_template = None
    # the token types that get_rope_index needs (unlike Qwen3-VL's, the processor's default
    # leaves them out)
    processor_kwargs = {"return_mm_token_type_ids": True}

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "hidden_size": spec["vision_hidden_size"],
            "intermediate_size": 2 * spec["vision_hidden_size"],
            "num_hidden_layers": spec["vision_layers"],
            "num_attention_heads": spec["vision_attention_heads"],
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
        }

    @staticmethod
    def tiny_image_processor(spec: Mapping[str, Any]) -> Cosmos3EdgeImageProcessor:
        # the real processor (16-pixel patches, 2 x 2 merge) within the image-token bounds
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        return Cosmos3EdgeImageProcessor(
            size={
                "shortest_edge": spec["min_image_tokens"] * pixels_per_token,
                "longest_edge": spec["max_image_tokens"] * pixels_per_token,
            }
        )

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        rotary_half = head_dim // 2
        spatial = 5 * rotary_half // 16  # the real sections: 24/20/20 of 64
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 100_000_000.0,
                "mrope_section": [rotary_half - 2 * spatial, spatial, spatial],
            },
        }

    @classmethod
    def tiny_config_extras(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {"projector_hidden_size": 2 * spec["hidden_size"]}
