"""Muse Spark: Muse Glimmer's windowed ViT (pixel-shuffled 2 x 2, an MLP adapter) and decoder
layout (sliding-window layers with rotary positions, NoPE global ones), whose feed-forward blocks
are mixtures of experts run at a pooled width, with gated residuals; an audio tower too, which
vlprobe does not use."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transformers import (
    MuseGlimmerVideoProcessor,
    MuseSparkConfig,
    MuseSparkFeatureExtractor,
    MuseSparkForConditionalGeneration,
    MuseSparkProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.muse_glimmer import MERGE_SIZE, SLIDING_WINDOW, MuseGlimmerAdapter


class MuseSparkAdapter(MuseGlimmerAdapter):
    """Muse Spark checkpoints (model_type ``muse_spark``,
    ``meta-models/Muse-Spark-Open-816B-A42B``), whose images vlprobe reads (not their audio).

    As Muse Glimmer: its processor (Muse Glimmer's, with audio) expands ``<|patch|>`` into
    ``<|image_start|>``, one ``<|patch|>`` per merged 2 x 2 patches and ``<|image_end|>``, and
    its image processor is Muse Glimmer's; plain 1-d positions, prefix reuse across the sliding
    windows. Its config names the same BOS and EOS ids, so the tiny tokenizer has Muse Glimmer's
    tokens and the processor's audio ones.

    The tiny decoder keeps the real layer pattern (the last layer global and NoPE), its first
    layer dense and the others mixtures of experts, so both kinds run; the tiny audio tower has
    the real downsampling (one token per 1,920 samples) in narrow stages. Tiny keys as for
    muse_glimmer.
    """

    family = "muse_spark"
    special_tokens = dataclasses.replace(
        MuseGlimmerAdapter.special_tokens,
        extra=(
            *MuseGlimmerAdapter.special_tokens.extra,
            "<|audio|>",
            "<|soft_audio_start|>",
            "<|soft_audio_end|>",
        ),
    )

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
            "sliding_window": SLIDING_WINDOW,
            "mlp_layer_types": ["dense"] + ["sparse"] * (spec["num_layers"] - 1),
            "moe_hidden_size": spec["hidden_size"] // 2,
            "moe_intermediate_size": spec["hidden_size"] // 2,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[MuseSparkForConditionalGeneration, MuseSparkProcessor]:
        processor = MuseSparkProcessor(
            image_processor=cls.tiny_image_processor(spec),
            video_processor=MuseGlimmerVideoProcessor(),  # required by the processor; unused
            tokenizer=tokenizer,
            feature_extractor=MuseSparkFeatureExtractor(),  # likewise
        )
        config = MuseSparkConfig(
            vision_config=cls.tiny_vision_config(spec),
            text_config=cls.tiny_text_config(tokenizer, spec),
            audio_config={
                "hidden_sizes": [16, 16, 16, 16],
                "depths": [1, 1, 1, 1],
                "out_hidden_size": spec["hidden_size"],
            },
            image_token_id=processor.image_token_id,
            video_token_id=processor.video_token_id,
            audio_token_id=processor.audio_token_id,
            # the pixel shuffle folds 2 x 2 patches into the channels
            out_hidden_size=spec["vision_hidden_size"] * MERGE_SIZE**2,
            projector_hidden_size=spec["hidden_size"],
        )
        return MuseSparkForConditionalGeneration(config), processor
