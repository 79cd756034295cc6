"""Glmga: GLM-4.6V's model and processor classes (GLM-4.1V's vision tower, a GLM-4 decoder with
partial M-RoPE) under their own model type, with their own config and image/video processors."""

from __future__ import annotations

from transformers import GlmgaConfig, GlmgaImageProcessor, GlmgaVideoProcessor

from vlprobe.models.glm46v import Glm46VAdapter


class GlmgaAdapter(Glm46VAdapter):
    """Glmga checkpoints (model_type ``glmga``; transformers names no released one: its config
    docstring points at GLM-4.1V's). transformers' auto classes load them with GLM-4.6V's
    ``Glm46VForConditionalGeneration`` and ``Glm46VProcessor``; GLM-4.1V's tokens and M-RoPE.
    Only the config and the image and video processors differ: Glmga's image processor resizes
    images to multiples of its ``patch_expand_factor`` times the patch and merge sizes (1 by
    default, which the tiny model keeps), and the image-token count follows the resulting patch
    grid as in GLM-4.6V, so nothing differs from the generic adapter; tiny keys as for ``glm4v``.
    """

    family = "glmga"
    config_class = GlmgaConfig
    image_processor_class = GlmgaImageProcessor
    video_processor_class = GlmgaVideoProcessor
