"""Idefics3 and SmolVLM: a SigLIP vision encoder, a pixel-shuffle connector and a Llama decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8
SCALE_FACTOR = 2  # the connector's pixel shuffle merges SCALE_FACTOR**2 patches per token
# the tokens that mark the tiles of a split image in the real tokenizer
TILE_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))


class Idefics3Adapter(LoadedVLM):
    """Idefics3 and SmolVLM (v1) checkpoints (model_type ``idefics3``).

    Tiny key: ``image_size`` (64), the encoder resolution; the tiny processor does not split
    images into tiles, so an image gives ``(image_size / 8 / 2) ** 2`` image tokens.
    """

    family = "idefics3"
    special_tokens = SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<end_of_utterance>",
        pad="<|end_of_text|>",
        extra=("<fake_token_around_image>", "<image>", "<global-img>", *TILE_TOKENS),
    )
    tiny_defaults = {"image_size": 64}
    tiny_chat_template = "idefics3.jinja"

    # the tiny model's classes; SmolVLM's own classes have the same arguments
    config_class: ClassVar[type] = Idefics3Config
    model_class: ClassVar[type] = Idefics3ForConditionalGeneration
    image_processor_class: ClassVar[type] = Idefics3ImageProcessor
    processor_class: ClassVar[type] = Idefics3Processor

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        image_size = spec["image_size"]
        image_processor = cls.image_processor_class(
            do_image_splitting=False,
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
        )
        processor = cls.processor_class(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=(image_size // PATCH_SIZE // SCALE_FACTOR) ** 2,
            **cls.tiny_processor_extras(),
        )
        config = cls.config_class(
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": image_size,
                "patch_size": PATCH_SIZE,
            },
            text_config=LlamaConfig(**text_config_kwargs(tokenizer, spec)),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            scale_factor=SCALE_FACTOR,
            pad_token_id=tokenizer.pad_token_id,
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_processor_extras(cls) -> dict[str, Any]:
        """Further processor arguments of the tiny model."""
        return {}
