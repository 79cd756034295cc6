"""Command A Vision (Cohere2-Vision): a SigLIP2 encoder over the image's tiles and a thumbnail, a
pixel-shuffle SwiGLU projector and a Cohere2 decoder, as in Aya Vision, with its own processor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Cohere2VisionConfig,
    Cohere2VisionForConditionalGeneration,
    Cohere2VisionImageProcessor,
    Cohere2VisionProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.aya_vision import DOWNSAMPLE, MAX_TILES, cohere2_text_config
from vlprobe.models.base import LoadedVLM, siglip_config
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8  # the real encoder's are 16 pixels, over 512-pixel tiles


class Cohere2VisionAdapter(LoadedVLM):
    """Cohere2-Vision checkpoints (model_type ``cohere2_vision``,
    ``CohereLabs/command-a-vision-07-2025``).

    The placeholder is the feature token ``<|IMG_PATCH|>`` itself; the processor expands it to
    ``<|START_OF_IMG|>``, per tile its ``<|IMG_PATCH|>`` tokens and ``<|IMG_LINE_BREAK|>`` (the
    thumbnail's last), and ``<|END_OF_IMG|>``. Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (32), the tile resolution: ``(image_size / 16) ** 2`` tokens per tile.
    """

    family = "cohere2_vision"
    special_tokens = SpecialTokens(
        bos="<BOS_TOKEN>",
        eos="<|END_OF_TURN_TOKEN|>",
        pad="<PAD>",
        extra=("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"),
        named={
            "image_token": "<|IMG_PATCH|>",
            "boi_token": "<|START_OF_IMG|>",
            "eoi_token": "<|END_OF_IMG|>",
            "img_line_break_token": "<|IMG_LINE_BREAK|>",
        },
    )
    tiny_defaults = {"image_size": 32}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Cohere2VisionForConditionalGeneration, Cohere2VisionProcessor]:
        size = spec["image_size"]
        processor = Cohere2VisionProcessor(
            image_processor=Cohere2VisionImageProcessor(
                size={"height": size, "width": size},
                max_patches=MAX_TILES,
                # the processor reads it as the tokens along a tile's side
                patch_size=size // PATCH_SIZE // DOWNSAMPLE,
            ),
            tokenizer=tokenizer,
        )
        config = Cohere2VisionConfig(
            vision_config=siglip_config(spec, size, PATCH_SIZE),
            text_config=cohere2_text_config(tokenizer, spec),
            image_token_id=tokenizer.image_token_id,
            downsample_factor=DOWNSAMPLE,
            alignment_intermediate_size=2 * spec["hidden_size"],
        )
        return Cohere2VisionForConditionalGeneration(config), processor
