"""GLM-4.1V / GLM-4.5V-style: an AIMv2-style ViT (14-pixel patches, 2 x 2 merger, 2-D rotary and
interpolated absolute positions) and a GLM-4 decoder with partial M-RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    BaseImageProcessor,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessor,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, merger_vit_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2


class Glm4vAdapter(LoadedVLM):
    """GLM-4.1V checkpoints (model_type ``glm4v``, ``zai-org/GLM-4.1V-9B-*``). The placeholder
    ``<|image|>`` expands to ``<|begin_of_image|>``, the image tokens, ``<|end_of_image|>``.
    Nothing differs from the generic adapter (M-RoPE through the model's ``get_rope_index``).

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) per image.
    """

    family = "glm4v"
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=("[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|system|>"),
        named={
            "image_token": "<|image|>",
            "video_token": "<|video|>",
            "image_start_token": "<|begin_of_image|>",
            "image_end_token": "<|end_of_image|>",
            "video_start_token": "<|begin_of_video|>",
            "video_end_token": "<|end_of_video|>",
        },
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    # the real classes; GLM-4.5V swaps them and its decoder's MLPs, GLM-4.6V all of them
    config_class: ClassVar[type] = Glm4vConfig
    model_class: ClassVar[type] = Glm4vForConditionalGeneration
    processor_class: ClassVar[type] = Glm4vProcessor
    image_processor_class: ClassVar[type] = Glm4vImageProcessor
    video_processor_class: ClassVar[type] = Glm4vVideoProcessor

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        rotary_half = head_dim // 4  # half of the rotary half: partial_rotary_factor 0.5
        spatial = max(3 * rotary_half // 8, 1)  # the real sections: 8/12/12 of 32
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [rotary_half - 2 * spatial, spatial, spatial],
                "partial_rotary_factor": 0.5,
            },
        }

    @classmethod
    def tiny_image_processor(cls, spec: Mapping[str, Any]) -> BaseImageProcessor:
        """The real image processor (14-pixel patches, 2 x 2 merge) within the tiny keys'
        image-token bounds."""
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        return cls.image_processor_class(
            size={
                "shortest_edge": spec["min_image_tokens"] * pixels_per_token,
                "longest_edge": spec["max_image_tokens"] * pixels_per_token,
            },
            patch_size=PATCH_SIZE,
            merge_size=MERGE_SIZE,
        )

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A small ViT with the real patch and merge sizes, its merger feeding the decoder."""
        return {**merger_vit_config(spec, PATCH_SIZE, MERGE_SIZE), "image_size": 112}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        processor = cls.processor_class(
            image_processor=cls.tiny_image_processor(spec),
            tokenizer=tokenizer,
            video_processor=cls.video_processor_class(),  # required by the processor; unused
        )
        config = cls.config_class(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config=cls.tiny_vision_config(spec),
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
            image_start_token_id=tokenizer.image_start_token_id,
            image_end_token_id=tokenizer.image_end_token_id,
            video_start_token_id=tokenizer.video_start_token_id,
            video_end_token_id=tokenizer.video_end_token_id,
        )
        return cls.model_class(config), processor


class Glm4vMoeAdapter(Glm4vAdapter):
    """GLM-4.5V checkpoints (model_type ``glm4v_moe``, ``zai-org/GLM-4.5V``): GLM-4.1V with a
    mixture-of-experts decoder (the first layer dense). Nothing differs from the generic
    adapter; tiny keys as for ``glm4v``."""

    config_class = Glm4vMoeConfig
    model_class = Glm4vMoeForConditionalGeneration
    family = "glm4v_moe"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        return {
            **super().tiny_text_config(tokenizer, spec),
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": spec["intermediate_size"] // 2,
            "first_k_dense_replace": 1,
        }
