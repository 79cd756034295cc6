"""Qwen3-VL: a SigLIP2-style ViT (16-pixel patches, 2 x 2 merger) whose intermediate layers also
feed the decoder ("deepstack": their merged features are added to the image tokens' hidden
states after each of the first decoder layers), and a Qwen3 decoder with interleaved M-RoPE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlprobe.models.base import LoadedVLM, merger_vit_config, text_config_kwargs
from vlprobe.models.qwen2_vl import Qwen2VLAdapter, vision_token_ids

PATCH_SIZE = 16  # one image token per 32 x 32 pixels
MERGE_SIZE = 2


class Qwen3VLAdapter(LoadedVLM):
    """Qwen3-VL checkpoints (model_type ``qwen3_vl``, ``Qwen/Qwen3-VL-*``); Qwen2-VL's special
    tokens. Nothing differs from the generic adapter: placeholder from the chat template, M-RoPE
    positions from the model's ``get_rope_index``.

    Deepstack: hidden state ``i`` is the input of decoder layer ``i``; for ``1 <= i <= k`` (k the
    number of deepstack levels, 3 in the released models) that is layer ``i - 1``'s output plus
    the ``i``-th deepstack features at the image tokens, so it differs from transformers'
    ``output_hidden_states[i]`` (taken before the addition) at the image tokens only.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64), as for Qwen2-VL.
    """

    config_class: ClassVar[type] = Qwen3VLConfig
    model_class: ClassVar[type] = Qwen3VLForConditionalGeneration
    processor_class: ClassVar[type] = Qwen3VLProcessor
    image_processor_class: ClassVar[type] = Qwen2VLImageProcessor
    video_processor_class: ClassVar[type] = Qwen3VLVideoProcessor

    family = "qwen3_vl"
    special_tokens = Qwen2VLAdapter.special_tokens
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        rotary_half = head_dim // 2
        spatial = rotary_half // 4  # the real sections: 24/20/20 of 64
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [rotary_half - 2 * spatial, spatial, spatial],
                "mrope_interleaved": True,
            },
        }

    @classmethod
    def tiny_image_processor(cls, spec: Mapping[str, Any]) -> Qwen2VLImageProcessor:
        """Qwen3-VL's image processor (16-pixel patches, 2 x 2 merge) within the tiny keys'
        image-token bounds; LFM3-VL's checkpoints take the same."""
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        return cls.image_processor_class(
            patch_size=PATCH_SIZE,
            merge_size=MERGE_SIZE,
            min_pixels=spec["min_image_tokens"] * pixels_per_token,
            max_pixels=spec["max_image_tokens"] * pixels_per_token,
        )

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A small ViT with the real patch and merge sizes, deepstack from its first layers."""
        layers = spec["vision_layers"]
        return {
            **merger_vit_config(spec, PATCH_SIZE, MERGE_SIZE),
            "num_position_embeddings": 64,
            # deepstack features from every vision layer but the last (real: 3 of 27)
            "deepstack_visual_indexes": list(range(layers - 1)) or [0],
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        processor = cls.processor_class(
            image_processor=cls.tiny_image_processor(spec),
            tokenizer=tokenizer,
            video_processor=cls.video_processor_class(),  # required by the processor; unused here
        )
        config = cls.config_class(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config=cls.tiny_vision_config(spec),
            **cls.tiny_vision_token_ids(tokenizer),
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_vision_token_ids(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        """The config's image, video and vision start/end token ids."""
        return vision_token_ids(tokenizer)


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL mixture-of-experts checkpoints (model_type ``qwen3_vl_moe``,
    ``Qwen/Qwen3-VL-30B-A3B-*``): Qwen3-VL with routed experts in the decoder's MLPs. Nothing
    differs from the generic adapter; tiny keys as for ``qwen3_vl``."""

    config_class = Qwen3VLMoeConfig
    model_class = Qwen3VLMoeForConditionalGeneration
    family = "qwen3_vl_moe"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        return {
            **super().tiny_text_config(tokenizer, spec),
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": spec["intermediate_size"] // 2,
        }
