"""PaddleOCR-VL (Baidu): a NaViT-style SigLIP encoder (14-pixel patches at native resolution,
2-d rotary positions), a 2 x 2 merging projector, and an ERNIE-4.5-0.3B decoder with Qwen2-VL's
M-RoPE over the image tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PaddleOCRVLConfig,
    PaddleOCRVLForConditionalGeneration,
    PaddleOCRVLImageProcessor,
    PaddleOCRVLProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.qwen2_vl import MERGE_SIZE, PATCH_SIZE, mrope_section
from vlprobe.models.tiny import SpecialTokens


class PaddleOCRVLAdapter(LoadedVLM):
    """PaddleOCR-VL checkpoints (model_type ``paddleocr_vl``, ``PaddlePaddle/PaddleOCR-VL``).
    Nothing differs from the generic adapter: the processor expands ``<|IMAGE_PLACEHOLDER|>``
    (which the chat template writes between ``<|IMAGE_START|>`` and ``<|IMAGE_END|>``), the M-RoPE
    positions of a reused prefix come from the model's ``get_rope_index``, and the decoder is
    causal over the image tokens, so prefix reuse is valid.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) bound the image tokens
    per image (one per 28 x 28 pixels, as in the real model), through the image processor's
    pixel limits. The tiny model has no chat template (the checkpoint's is not available
    offline), so it runs in raw format with the bare placeholder.
    """

    family = "paddleocr_vl"
    special_tokens = SpecialTokens(
        eos="</s>",
        pad="<unk>",
        unk="<unk>",
        extra=("<|begin_of_sentence|>", "<|end_of_sentence|>", "<|IMAGE_START|>", "<|IMAGE_END|>"),
        # the processor reads the placeholder from the tokenizer (tokenizer.image_token)
        named={"image_token": "<|IMAGE_PLACEHOLDER|>"},
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PaddleOCRVLForConditionalGeneration, PaddleOCRVLProcessor]:
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        processor = PaddleOCRVLProcessor(
            image_processor=PaddleOCRVLImageProcessor(
                min_pixels=spec["min_image_tokens"] * pixels_per_token,
                max_pixels=spec["max_image_tokens"] * pixels_per_token,
            ),
            tokenizer=tokenizer,
        )
        config = PaddleOCRVLConfig(
            text_config={
                **text_config_kwargs(tokenizer, spec),
                # the config's default head_dim (128) is the real model's, not hidden / heads
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "rope_parameters": {"rope_type": "default", "mrope_section": mrope_section(spec)},
            },
            vision_config={
                **vision_config_kwargs(spec),
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
                # a 4 x 4 grid of learned positions, resampled to each image's grid (real: 27 x 27)
                "image_size": 4 * PATCH_SIZE,
            },
            image_token_id=tokenizer.image_token_id,
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|IMAGE_START|>"),
            vision_end_token_id=tokenizer.convert_tokens_to_ids("<|IMAGE_END|>"),
        )
        return PaddleOCRVLForConditionalGeneration(config), processor
