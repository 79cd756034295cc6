"""GLM-OCR: GLM-4.1V's layout at OCR size (a 0.4B ViT, a 16-layer GLM-4 decoder of width 1024
with partial M-RoPE), in its own transformers classes, with GLM-4.6V's processor."""

from __future__ import annotations

from transformers import GlmOcrConfig, GlmOcrForConditionalGeneration

from vlprobe.models.glm46v import Glm46VAdapter


class GlmOcrAdapter(Glm46VAdapter):
    """GLM-OCR checkpoints (model_type ``glm_ocr``, ``zai-org/GLM-OCR``); GLM-4.1V's tokens and
    M-RoPE, and GLM-4.6V's processor, which its checkpoint names. Nothing differs from the
    generic adapter; tiny keys as for ``glm4v``.
    """

    family = "glm_ocr"
    config_class = GlmOcrConfig
    model_class = GlmOcrForConditionalGeneration
