"""LLaVA (1.5): a CLIP vision tower, a two-layer MLP projector and a Llama decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14


class LlavaAdapter(LoadedVLM):
    """LLaVA checkpoints converted to transformers (model_type ``llava``, ``llava-hf/...``).

    Tiny key: ``image_size`` (56), the CLIP input resolution; an image gives
    ``(image_size / 14) ** 2`` image tokens (the CLS token is dropped, as in LLaVA-1.5).
    """

    family = "llava"
    special_tokens = SpecialTokens(
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", extra=("<image>",)
    )
    tiny_defaults = {"image_size": 56}
    tiny_chat_template = "llava.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
        image_size = spec["image_size"]
        # resize the shorter side, then centre-crop to a square, like the real processor
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor, **cls.tiny_processor_kwargs(tokenizer)
        )
        config = LlavaConfig(
            **cls.tiny_config_kwargs(tokenizer, spec),
            image_seq_length=(image_size // PATCH_SIZE) ** 2,
        )
        return LlavaForConditionalGeneration(config), processor

    @staticmethod
    def tiny_processor_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """The processor arguments of LLaVA-1.5's feature choice (CLIP's patches without CLS)."""
        return {
            "tokenizer": tokenizer,
            "patch_size": PATCH_SIZE,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,  # CLIP's CLS token
        }

    @staticmethod
    def tiny_config_kwargs(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """A CLIP tower at the tiny ``image_size`` (its penultimate layer's patches) and a
        Llama decoder."""
        return {
            "vision_config": CLIPVisionConfig(
                **vision_config_kwargs(spec),
                image_size=spec["image_size"],
                patch_size=PATCH_SIZE,
                projection_dim=spec["vision_hidden_size"],
            ),
            "text_config": LlamaConfig(**text_config_kwargs(tokenizer, spec)),
            "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
        }
