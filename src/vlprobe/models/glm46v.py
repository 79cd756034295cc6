"""GLM-4.6V: GLM-4.1V's vision tower, processor and decoder (the dense GLM-4 decoder in
GLM-4.6V-Flash, the mixture-of-experts one in GLM-4.6V), in their own transformers classes."""

from __future__ import annotations

from transformers import (
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
)

from vlprobe.models.glm4v import Glm4vAdapter


class Glm46VAdapter(Glm4vAdapter):
    """GLM-4.6V checkpoints (model_type ``glm46v``, ``zai-org/GLM-4.6V-Flash``,
    ``zai-org/GLM-4.6V``); GLM-4.1V's tokens and M-RoPE. Nothing differs from the generic
    adapter; tiny keys as for ``glm4v`` (the tiny model has the dense decoder).
    """

    family = "glm46v"
    config_class = Glm46VConfig
    model_class = Glm46VForConditionalGeneration
    processor_class = Glm46VProcessor
    image_processor_class = Glm46VImageProcessor
    video_processor_class = Glm46VVideoProcessor
