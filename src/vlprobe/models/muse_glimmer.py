"""Muse Glimmer (Meta): a windowed ViT over 14-pixel patches at the image's own aspect ratio
(2-D rotary and interpolated learned position embeddings), pixel-shuffled to one token per 2 x 2
patches, an MLP adapter, and a Gemma-2-style decoder with gated, QK-normed attention: sliding-window
layers with rotary positions, every fourth one (counted back from the last) global without
positions (NoPE); plain 1-d positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    MuseGlimmerConfig,
    MuseGlimmerForConditionalGeneration,
    MuseGlimmerImageProcessor,
    MuseGlimmerProcessor,
    MuseGlimmerVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2  # the pixel shuffle: one image token per 2 x 2 patches
# the tiny position table's side; the vision tower's attention windows are as many patches wide,
# so that a tiny image spans several windows (the real table is 32 x 32)
POSITION_GRID = 4
# shorter than the smallest tiny image block, so that a reused prefix crosses it, as a real image
# does (the real window is 2048 tokens)
SLIDING_WINDOW = 4


class MuseGlimmerAdapter(LoadedVLM):
    """Muse Glimmer checkpoints (model_type ``muse_glimmer``, ``meta-models/Muse-Glimmer-30B``).
    Nothing differs from the generic adapter: the processor expands ``<|patch|>`` into
    ``<|image_start|>``, one ``<|patch|>`` per merged 2 x 2 patches and ``<|image_end|>``; the
    decoder is causal, and its sliding-window layers in a suffix pass see the last window of the
    reused prefix, as in the full pass, so prefix reuse holds.

    The tokenizer's special tokens are Llama 4's, whose ids the config's defaults name (BOS
    200000 ``<|begin_of_text|>``, EOS 200001 ``<|end_of_text|>``, image 200092 ``<|patch|>``),
    with the processor's image and video tokens. Transformers has no chat template of it: the
    tiny model has none.

    Tiny key: ``max_image_tokens`` (16), merged tokens per image at most (real 4096).
    """

    family = "muse_glimmer"
    special_tokens = SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad="<|finetune_right_pad|>",
        extra=(
            "<|image_start|>",
            "<|image_end|>",
            "<|patch|>",
            "<|video|>",
            "<|vid_start|>",
            "<|vid_end|>",
            "<|vid_frame_separator|>",
        ),
    )
    tiny_defaults = {"max_image_tokens": 16}

    @classmethod
    def tiny_image_processor(cls, spec: Mapping[str, Any]) -> MuseGlimmerImageProcessor:
        """The real image processor, capped at ``max_image_tokens`` merged tokens per image."""
        return MuseGlimmerImageProcessor(
            patch_size=PATCH_SIZE,
            merge_size=MERGE_SIZE,
            max_image_tokens=spec["max_image_tokens"],
        )

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A tiny vision tower: windowed layers, the last one global, as in the real tower."""
        return {
            **vision_config_kwargs(spec),
            "patch_size": PATCH_SIZE,
            "merge_size": MERGE_SIZE,
            "pos_emb_height": POSITION_GRID,
            "pos_emb_width": POSITION_GRID,
            "max_position_embeddings": POSITION_GRID**2,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[MuseGlimmerForConditionalGeneration, MuseGlimmerProcessor]:
        processor = MuseGlimmerProcessor(
            image_processor=cls.tiny_image_processor(spec),
            video_processor=MuseGlimmerVideoProcessor(),  # required by the processor; unused
            tokenizer=tokenizer,
        )
        ids = tokenizer.convert_tokens_to_ids
        config = MuseGlimmerConfig(
            vision_config=cls.tiny_vision_config(spec),
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "sliding_window": SLIDING_WINDOW,
            },
            image_token_id=ids("<|patch|>"),
            video_token_id=ids("<|video|>"),
            # the pixel shuffle folds 2 x 2 patches into the channels
            out_hidden_size=spec["vision_hidden_size"] * MERGE_SIZE**2,
            projector_hidden_size=spec["hidden_size"],
        )
        return MuseGlimmerForConditionalGeneration(config), processor
