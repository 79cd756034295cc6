"""InternVL (the ``-hf`` checkpoints): an InternViT over the image's tiles, a pixel-shuffle MLP
projector and a Qwen2 decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2Config,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5  # the pixel shuffle merges 2 x 2 patches into one token
MAX_TILES = 4  # the real processor allows 12; a tiny model needs few


class InternVLAdapter(LoadedVLM):
    """InternVL checkpoints converted to transformers (model_type ``internvl``,
    ``OpenGVLab/InternVL3-*-hf``).

    The placeholder ``<IMG_CONTEXT>`` expands to ``<img>``, the tiles' context tokens and
    ``</img>``; the image goes on its own line, as the chat template writes it.

    Tiny key: ``image_size`` (56), the tile resolution: an image is cut into up to 4 tiles
    plus a thumbnail, each giving ``(image_size / 14 / 2) ** 2`` tokens.
    """

    family = "internvl"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>",),
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    tiny_defaults = {"image_size": 56}
    tiny_chat_template = "internvl.jinja"
    # the tiny model's classes; Qianfan-OCR's take the same arguments
    config_class: ClassVar[type] = InternVLConfig
    vision_config_class: ClassVar[type] = InternVLVisionConfig
    text_config_class: ClassVar[type] = Qwen2Config
    model_class: ClassVar[type] = InternVLForConditionalGeneration

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        size = spec["image_size"]
        tokens_per_tile = int((size // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)
        processor = cls.tiny_processor(
            tokenizer,
            GotOcr2ImageProcessor(size={"height": size, "width": size}, max_patches=MAX_TILES),
            tokens_per_tile,
        )
        config = cls.config_class(
            vision_config=cls.vision_config_class(
                **vision_config_kwargs(spec), image_size=size, patch_size=PATCH_SIZE
            ),
            text_config=cls.text_config_class(**text_config_kwargs(tokenizer, spec)),
            image_token_id=tokenizer.context_image_token_id,
            image_seq_length=tokens_per_tile,
            downsample_ratio=DOWNSAMPLE_RATIO,
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_processor(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: GotOcr2ImageProcessor,
        tokens_per_tile: int,
    ) -> ProcessorMixin:
        return InternVLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(),  # required by the processor; unused here
            image_seq_length=tokens_per_tile,
        )
