"""ERNIE-4.5-VL (Baidu): a native-resolution ViT (14-pixel patches) whose resampler merges 2 x 2
patches into one token, and a mixture-of-experts ERNIE-4.5 decoder with separate text and vision
experts (a token's modality picks its experts) and 3-d M-RoPE over the image tokens."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Ernie4_5_VLMoeImageProcessor,
    Ernie4_5_VLMoeProcessor,
    Ernie4_5_VLMoeVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.hunyuan_vl import enclosed_image_placeholder
from vlprobe.models.qwen2_vl import MERGE_SIZE, PATCH_SIZE
from vlprobe.models.tiny import SpecialTokens


class Ernie4_5_VLMoeAdapter(LoadedVLM):
    """ERNIE-4.5-VL checkpoints (model_type ``ernie4_5_vl_moe``, ``baidu/ERNIE-4.5-VL-*-PT``).

    The processor's ``moe_mm_token_type_ids`` send the image tokens and the image start and end
    tokens around them to the vision experts; all of them are bound to the image, so a reused
    prefix holds them (a suffix pass, text only, goes to the text experts, as in the full
    pass). M-RoPE positions of a reused prefix come from the model's ``get_rope_index``; the
    decoder is causal, so prefix reuse is valid. The raw placeholder is what the checkpoint's
    chat template writes (``Picture 1:<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>``);
    without a template, the image token between ``<|IMAGE_START|>`` and ``<|IMAGE_END|>``.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) bound the image tokens
    (one per 28 x 28 pixels, as in the real model) through the image processor's pixel limits.
    The tiny model has no chat template (the checkpoint's is not available offline).
    """

    family = "ernie4_5_vl_moe"
    special_tokens = SpecialTokens(
        # as transformers' conversion script writes the tokenizer: no BOS added (the chat
        # template writes <|begin_of_sentence|>), <unk> as padding
        eos="</s>",
        pad="<unk>",
        unk="<unk>",
        extra=(
            "<s>",
            "<|begin_of_sentence|>",
            "<|end_of_sentence|>",
            "<mask:1>",
            "<think>",
            "</think>",
        ),
        # the processor reads these from the tokenizer (tokenizer.image_token, ...)
        named={
            "image_token": "<|IMAGE_PLACEHOLDER|>",
            "image_start_token": "<|IMAGE_START|>",
            "image_end_token": "<|IMAGE_END|>",
            "video_token": "<|VIDEO_PLACEHOLDER|>",
            "video_start_token": "<|VIDEO_START|>",
            "video_end_token": "<|VIDEO_END|>",
        },
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}

    @functools.cached_property
    def image_placeholder(self) -> str:
        # the image start and end tokens belong to the image (its experts), as in the template
        return enclosed_image_placeholder(self.processor, self.image_token)

    def image_bound_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # every token that the vision experts take (image, start and end) stays in the prefix
        return super().image_bound_mask(inputs) | inputs["moe_mm_token_type_ids"].bool()

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Ernie4_5_VLMoeForConditionalGeneration, Ernie4_5_VLMoeProcessor]:
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        processor = Ernie4_5_VLMoeProcessor(
            image_processor=Ernie4_5_VLMoeImageProcessor(
                size={
                    "shortest_edge": spec["min_image_tokens"] * pixels_per_token,
                    "longest_edge": spec["max_image_tokens"] * pixels_per_token,
                }
            ),
            tokenizer=tokenizer,
            # required by the processor, unused here; drawing timestamps needs a font file
            video_processor=Ernie4_5_VLMoeVideoProcessor(draw_on_frames=False),
        )
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        # (height, width, time) sections of the rotary half, in the real 22/22/20 of 64
        time = head_dim // 2 * 5 // 16
        spatial = (head_dim // 2 - time) // 2
        config = Ernie4_5_VLMoeConfig(
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": head_dim,
                "rope_parameters": {
                    "rope_type": "default",
                    "mrope_section": [spatial, spatial, head_dim // 2 - 2 * spatial],
                },
                # separate text and vision experts (widths), a shared expert, a dense first layer
                "moe_intermediate_size": [spec["intermediate_size"] // 2] * 2,
                "moe_num_experts": 4,
                "moe_k": 2,
                "moe_num_shared_experts": 1,
            },
            vision_config={
                "depth": spec["vision_layers"],
                "hidden_size": spec["vision_hidden_size"],
                "intermediate_size": 2 * spec["vision_hidden_size"],
                "num_heads": spec["vision_attention_heads"],
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
            },
            **{
                f"{kind}_token_id": tokenizer.convert_tokens_to_ids(
                    getattr(tokenizer, f"{kind}_token")
                )
                for kind in (
                    "image",
                    "image_start",
                    "image_end",
                    "video",
                    "video_start",
                    "video_end",
                )
            },
        )
        return Ernie4_5_VLMoeForConditionalGeneration(config), processor
