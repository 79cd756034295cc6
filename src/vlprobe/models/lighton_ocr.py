"""LightOnOCR: Mistral 3's architecture (a Pixtral encoder at the image's own aspect ratio and a
2 x 2 patch merger) with a Qwen3 decoder, trained end to end for document OCR."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    LightOnOcrConfig,
    LightOnOcrForConditionalGeneration,
    LightOnOcrProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.mistral3 import Mistral3Adapter
from vlprobe.models.tiny import SpecialTokens


class LightOnOcrAdapter(Mistral3Adapter):
    """LightOnOCR checkpoints (model_type ``lighton_ocr``, ``lightonai/LightOnOCR-*``); Qwen3's
    tokenizer, whose vision tokens stand for Pixtral's image, break and end tokens (the
    processor reads them as tokenizer attributes). The processor writes one ``<|image_pad|>``
    per merged patch, without row breaks. Nothing else differs from the generic adapter.

    Tiny key: ``image_size`` (112), as for Mistral 3.
    """

    family = "lighton_ocr"
    config_class = LightOnOcrConfig
    model_class = LightOnOcrForConditionalGeneration
    processor_class = LightOnOcrProcessor
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>",),
        named={
            "image_token": "<|image_pad|>",
            "image_break_token": "<|vision_pad|>",
            "image_end_token": "<|vision_end|>",
        },
    )

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        return {
            "model_type": "qwen3",
            **text_config_kwargs(tokenizer, spec),
            "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
        }

    @classmethod
    def tiny_image_kwargs(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        return {"image_token_id": tokenizer.image_token_id}
