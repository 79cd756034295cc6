"""Aya Vision: a SigLIP2 encoder over the image's tiles and a thumbnail, a pixel-shuffle
projector and a Cohere2 decoder (sliding-window layers interleaved with global ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    GotOcr2ImageProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, siglip_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
DOWNSAMPLE = 2  # the pixel shuffle merges 2 x 2 patches into one token
MAX_TILES = 4  # the real processor allows 12; a tiny model needs few


def cohere2_text_config(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
    """A tiny Cohere2 decoder: sliding-window layers with a global one every other layer, the
    window shorter than an image so that it matters."""
    return {
        "model_type": "cohere2",
        **text_config_kwargs(tokenizer, spec),
        "sliding_window": 8,
        "layer_types": [
            "full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
            for i in range(spec["num_layers"])
        ],
    }


class AyaVisionAdapter(LoadedVLM):
    """Aya Vision checkpoints (model_type ``aya_vision``, ``CohereLabs/aya-vision-*``).

    The placeholder ``<image>`` expands to ``<|START_OF_IMG|>``, per tile a ``TILE_k`` tag and
    its ``<|IMG_PATCH|>`` tokens (those hold the features), the thumbnail's, and
    ``<|END_OF_IMG|>``. Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (56), the tile resolution: ``(image_size / 28) ** 2`` tokens per tile.
    """

    family = "aya_vision"
    special_tokens = SpecialTokens(
        bos="<BOS_TOKEN>",
        eos="<|END_OF_TURN_TOKEN|>",
        pad="<PAD>",
        extra=(
            "<image>",
            "<|START_OF_IMG|>",
            "<|END_OF_IMG|>",
            "<|IMG_PATCH|>",
            "<|IMG_LINE_BREAK|>",
            "<|START_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
        ),
    )
    tiny_defaults = {"image_size": 56}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[AyaVisionForConditionalGeneration, AyaVisionProcessor]:
        size = spec["image_size"]
        processor = AyaVisionProcessor(
            image_processor=GotOcr2ImageProcessor(
                size={"height": size, "width": size},
                crop_to_patches=True,
                max_patches=MAX_TILES,
            ),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            downsample_factor=DOWNSAMPLE,
            img_size=size,
        )
        config = AyaVisionConfig(
            vision_config=siglip_config(spec, size, PATCH_SIZE),
            text_config=cohere2_text_config(tokenizer, spec),
            image_token_index=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
            downsample_factor=DOWNSAMPLE,
        )
        return AyaVisionForConditionalGeneration(config), processor
