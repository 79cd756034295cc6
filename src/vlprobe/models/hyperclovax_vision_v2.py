"""HyperCLOVA X Vision V2 (HyperCLOVAX-SEED-Think): a Qwen2.5-VL windowed ViT and 2 x 2 patch
merger, a linear projector and a HyperCLOVA X decoder (plain 1-d positions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    HyperCLOVAXVisionV2Config,
    HyperCLOVAXVisionV2ForConditionalGeneration,
    HyperCLOVAXVisionV2Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.exaone4_5 import Exaone4_5Adapter
from vlprobe.models.tiny import SpecialTokens


class HyperCLOVAXVisionV2Adapter(Exaone4_5Adapter):
    """HyperCLOVA X Vision V2 checkpoints (model_type ``hyperclovax_vision_v2``,
    ``naver-hyperclovax/HyperCLOVAX-SEED-Think-32B``); its processor is EXAONE 4.5's (the
    placeholder expands to one token per merged 2 x 2 patch), so nothing differs from the
    generic adapter. The tiny tokenizer's tokens are ChatML's and the processor's default image
    and video tokens (the checkpoint's tokenizer was not read here).

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64), as for qwen2_vl.
    """

    family = "hyperclovax_vision_v2"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<|image_pad|>", "<|video_pad|>"),
    )
    config_class = HyperCLOVAXVisionV2Config
    model_class = HyperCLOVAXVisionV2ForConditionalGeneration
    processor_class = HyperCLOVAXVisionV2Processor

    @classmethod
    def tiny_text_config(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {"model_type": "hyperclovax", **text_config_kwargs(tokenizer, spec)}
