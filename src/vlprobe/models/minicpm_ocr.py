"""MiniCPM-OCR: MiniCPM-V 4.6's SigLIP2 encoder, mergers and Qwen3.5 decoder, reading documents
at the "4x" downsampling (the window-attention merger skipped: 4 times 4.6's image tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    MiniCPMOcrConfig,
    MiniCPMOcrForConditionalGeneration,
    MiniCPMOcrImageProcessor,
    MiniCPMOcrProcessor,
    MiniCPMOcrVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.minicpmv4_6 import MiniCPMV4_6Adapter


class MiniCPMOcrAdapter(MiniCPMV4_6Adapter):
    """MiniCPM-OCR checkpoints (model_type ``minicpm_ocr``, ``openbmb/MiniCPM-OCR-1.0``); 4.6's
    tokens, placeholder and prefix reuse (the same decoder and cache).

    Tiny key: ``image_size`` (112), as for 4.6; an image of at most that size gives
    ``(side / 14 / 2)`` tokens per side (one 2 x 2 merge, at "4x").
    """

    family = "minicpm_ocr"
    config_class = MiniCPMOcrConfig
    model_class = MiniCPMOcrForConditionalGeneration
    processor_class = MiniCPMOcrProcessor
    image_processor_class = MiniCPMOcrImageProcessor
    video_processor_class = MiniCPMOcrVideoProcessor

    @classmethod
    def tiny_config_extras(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {}  # the config has no top-level image_size (only the encoder's)
