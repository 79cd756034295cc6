"""Qwen2-VL: a Qwen2 decoder with M-RoPE over a ViT whose 2x2 patch merger yields image tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    PreTrainedTokenizerBase,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

# the real model's patch size and merge size: one image token per 28 x 28 pixels
PATCH_SIZE = 14
MERGE_SIZE = 2


def mrope_section(spec: Mapping[str, Any]) -> list[int]:
    """M-RoPE's (temporal, height, width) sections of a tiny model's rotary half-dimension, in
    Qwen2-VL's proportions (16/24/24 of 64); PaddleOCR-VL's checkpoints have the same."""
    rotary_half = spec["hidden_size"] // spec["num_attention_heads"] // 2
    spatial = 3 * rotary_half // 8
    return [rotary_half - 2 * spatial, spatial, spatial]


def vision_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """A tiny config's ids of Qwen2-VL's image and video tokens (Qwen3-VL and LFM3-VL name
    them alike)."""
    return {
        f"{kind}_token_id": tokenizer.convert_tokens_to_ids(token)
        for kind, token in [
            ("image", "<|image_pad|>"),
            ("video", "<|video_pad|>"),
            ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"),
        ]
    }


class Qwen2VLAdapter(LoadedVLM):
    """Qwen2-VL checkpoints (model_type ``qwen2_vl``). Everything is generic: the image
    placeholder (``<|vision_start|><|image_pad|><|vision_end|>``) comes from the chat template,
    the M-RoPE positions of a reused prefix from the model's ``get_rope_index``.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) bound the image tokens
    per image, through the image processor's pixel limits.
    """

    # the real classes; Qwen2.5-VL swaps them and its vision tower
    config_class: ClassVar[type] = Qwen2VLConfig
    model_class: ClassVar[type] = Qwen2VLForConditionalGeneration
    processor_class: ClassVar[type] = Qwen2VLProcessor
    video_processor_class: ClassVar[type] = Qwen2VLVideoProcessor

    family = "qwen2_vl"
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=(
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    tiny_chat_template = "qwen2_vl.jinja"  # Qwen2.5-VL's checkpoints ship the same

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The vision tower of a tiny model: a small ViT with the real patch and merge sizes."""
        return {
            "depth": spec["vision_layers"],
            "embed_dim": spec["vision_hidden_size"],
            "num_heads": spec["vision_attention_heads"],
            "mlp_ratio": 2,
            "hidden_size": spec["hidden_size"],  # the merger's output feeds the decoder
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
        }

    @staticmethod
    def tiny_image_processor(spec: Mapping[str, Any]) -> Qwen2VLImageProcessor:
        """The real image processor (14-pixel patches, 2 x 2 merge) within the tiny keys'
        image-token bounds."""
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        return Qwen2VLImageProcessor(
            min_pixels=spec["min_image_tokens"] * pixels_per_token,
            max_pixels=spec["max_image_tokens"] * pixels_per_token,
        )

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """The decoder of a tiny model: a small Qwen2 decoder with M-RoPE."""
        return {
            **text_config_kwargs(tokenizer, spec),
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope_section(spec)},
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
        processor = cls.processor_class(
            image_processor=cls.tiny_image_processor(spec),
            tokenizer=tokenizer,
            video_processor=cls.video_processor_class(),  # required by the processor; unused here
        )
        config = cls.config_class(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config=cls.tiny_vision_config(spec),
            **cls.tiny_config_extras(spec),
            **vision_token_ids(tokenizer),
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_config_extras(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Further config arguments of the tiny model."""
        return {}
