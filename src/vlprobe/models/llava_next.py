"""LLaVA-NeXT (1.6): LLaVA's CLIP tower and projector over the image's tiles (anyres: the whole
image and a grid of tiles at the best-fitting resolution), unpadded, with a newline token per
row, and a Llama/Mistral decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT checkpoints converted to transformers (model_type ``llava_next``,
    ``llava-hf/llava-v1.6-*-hf``); LLaVA's special tokens. Nothing else differs from the
    generic adapter.

    Tiny key: ``image_size`` (28), the tile resolution; grids of 1 x 1 to 2 x 2 tiles.
    """

    config_class: ClassVar[type] = LlavaNextConfig
    model_class: ClassVar[type] = LlavaNextForConditionalGeneration
    processor_class: ClassVar[type] = LlavaNextProcessor

    family = "llava_next"
    tiny_defaults = {"image_size": 28}
    tiny_chat_template = "llava_next.jinja"  # llava-v1.6-mistral-7b-hf's (Mistral [INST] turns)

    @classmethod
    def tiny_video(cls, tokenizer: PreTrainedTokenizerBase) -> tuple[dict, dict]:
        """The processor's and the config's arguments for video input (LLaVA-NeXT has none)."""
        return {}, {}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        video_processor, video_config = cls.tiny_video(tokenizer)
        processor = cls.processor_class(
            image_processor=cls.tiny_image_processor(spec),
            **cls.tiny_processor_kwargs(tokenizer),
            **video_processor,
        )
        config = cls.config_class(
            **cls.tiny_config_kwargs(tokenizer, spec),
            image_grid_pinpoints=cls.tiny_pinpoints(spec),
            **video_config,
        )
        return cls.model_class(config), processor

    @staticmethod
    def tiny_pinpoints(spec: Mapping[str, Any]) -> list[list[int]]:
        """The anyres resolutions of a tiny model: grids of 1 x 1 to 2 x 2 tiles."""
        size = spec["image_size"]
        return [[size * rows, size * cols] for rows in (1, 2) for cols in (1, 2)]

    @classmethod
    def tiny_image_processor(cls, spec: Mapping[str, Any]) -> LlavaNextImageProcessor:
        """LLaVA-NeXT's image processor with tiles of the tiny ``image_size``."""
        size = spec["image_size"]
        return LlavaNextImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_grid_pinpoints=cls.tiny_pinpoints(spec),
        )
