"""Mistral 3 (Mistral-Small-3.1 and later): a Pixtral vision encoder at the image's own aspect
ratio, a 2 x 2 patch merger, and a Mistral decoder; each row of image tokens ends in [IMG_BREAK],
the image in [IMG_END]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PixtralImageProcessor,
    PixtralProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2


class Mistral3Adapter(LoadedVLM):
    """Mistral 3 checkpoints in transformers' format (model_type ``mistral3``); the processor
    is Pixtral's. Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (112), the longest edge; an image gives one token per 28 x 28
    pixels, plus a break per row.
    """

    family = "mistral3"
    special_tokens = SpecialTokens(
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", extra=("[IMG]", "[IMG_BREAK]", "[IMG_END]")
    )
    tiny_defaults = {"image_size": 112}

    config_class: ClassVar[type] = Mistral3Config
    model_class: ClassVar[type] = Mistral3ForConditionalGeneration
    processor_class: ClassVar[type] = PixtralProcessor

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """The tiny decoder's config (Mistral 3's: a Mistral decoder)."""
        return {
            "model_type": "mistral",
            **text_config_kwargs(tokenizer, spec),
            "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
            "sliding_window": None,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        processor = cls.processor_class(
            image_processor=cls.tiny_image_processor(spec),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
        )
        config = cls.config_class(
            vision_config=cls.tiny_vision_config(spec),
            text_config=cls.tiny_text_config(tokenizer, spec),
            spatial_merge_size=MERGE_SIZE,
            **cls.tiny_image_kwargs(tokenizer),
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_image_kwargs(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """The config's image token and the vision layer its merger reads."""
        return {
            "image_token_index": tokenizer.convert_tokens_to_ids("[IMG]"),
            "vision_feature_layer": -1,
        }

    @staticmethod
    def tiny_image_processor(spec: Mapping[str, Any]) -> PixtralImageProcessor:
        """Pixtral's image processor at the tiny ``image_size`` (the longest edge)."""
        return PixtralImageProcessor(
            size={"longest_edge": spec["image_size"]},
            patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE},
        )

    @staticmethod
    def tiny_vision_config(spec: Mapping[str, Any]) -> dict[str, Any]:
        """A small Pixtral encoder with the real 14-pixel patches."""
        return {
            "model_type": "pixtral",
            **vision_config_kwargs(spec),
            "head_dim": spec["vision_hidden_size"] // spec["vision_attention_heads"],
            "image_size": spec["image_size"],
            "patch_size": PATCH_SIZE,
        }
