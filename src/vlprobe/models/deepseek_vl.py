"""DeepSeek-VL: a SigLIP encoder at a fixed resolution (the image padded to a square), a
two-layer MLP aligner, and a Llama-style DeepSeek-LLM decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLImageProcessor,
    DeepseekVLProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, siglip_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8  # the real encoder's are 16 pixels, at 384


class DeepseekVLAdapter(LoadedVLM):
    """DeepSeek-VL checkpoints converted to transformers (model_type ``deepseek_vl``,
    ``deepseek-community/deepseek-vl-1.3b-chat``). The placeholder ``<image_placeholder>``
    expands to one token per encoder patch. Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (32): ``(image_size / 8) ** 2`` image tokens.
    """

    config_class: ClassVar[type] = DeepseekVLConfig
    model_class: ClassVar[type] = DeepseekVLForConditionalGeneration
    processor_class: ClassVar[type] = DeepseekVLProcessor
    image_processor_class: ClassVar[type] = DeepseekVLImageProcessor

    family = "deepseek_vl"
    special_tokens = SpecialTokens(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜▁pad▁｜>",
        named={"image_token": "<image_placeholder>"},
    )
    tiny_defaults = {"image_size": 32}
    tiny_chat_template = "deepseek_vl.jinja"  # DeepSeek-VL hybrid checkpoints ship the same

    @classmethod
    def tiny_high_res(cls, spec: Mapping[str, Any]) -> tuple[dict, dict]:
        """The image processor's and the config's arguments of a high-resolution encoder
        (DeepSeek-VL has none)."""
        return {}, {}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        size = spec["image_size"]
        high_res_processor, high_res_config = cls.tiny_high_res(spec)
        processor = cls.processor_class(
            image_processor=cls.image_processor_class(
                size={"height": size, "width": size}, **high_res_processor
            ),
            tokenizer=tokenizer,
            num_image_tokens=(size // PATCH_SIZE) ** 2,
        )
        config = cls.config_class(
            vision_config=siglip_config(spec, size, PATCH_SIZE),
            text_config={"model_type": "llama", **text_config_kwargs(tokenizer, spec)},
            image_token_id=tokenizer.image_token_id,
            **high_res_config,
        )
        return cls.model_class(config), processor
