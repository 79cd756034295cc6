"""SmolVLM (and SmolVLM2): Idefics3's architecture (SigLIP, pixel-shuffle connector) with a
SmolLM2 decoder, in its own transformers classes and processor."""

from __future__ import annotations

from typing import Any

from transformers import (
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vlprobe.models.idefics3 import Idefics3Adapter


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM checkpoints (model_type ``smolvlm``, ``HuggingFaceTB/SmolVLM2-*``); Idefics3's
    tokens. Nothing else differs from the generic adapter.

    Tiny key: ``image_size`` (64), as for Idefics3.
    """

    family = "smolvlm"
    tiny_chat_template = None  # SmolVLM2's template is not available offline
    requires = ("num2words",)  # its processor writes image grid positions in words

    config_class = SmolVLMConfig
    model_class = SmolVLMForConditionalGeneration
    image_processor_class = SmolVLMImageProcessor
    processor_class = SmolVLMProcessor

    @classmethod
    def tiny_processor_extras(cls) -> dict[str, Any]:
        return {"video_processor": SmolVLMVideoProcessor()}  # required by the processor; unused
