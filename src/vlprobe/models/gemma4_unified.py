"""Gemma 4 Unified: Gemma 4's decoder without per-layer input embeddings, reading images through
an encoder-free embedder (raw 48 x 48-pixel patches, 3 x 3 merged 16-pixel patches, through
layer norms, a dense projection and factorised 2-d position embeddings) instead of a ViT. The
checkpoints' audio embedder is not used: image and text only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Gemma4UnifiedAudioFeatureExtractor,
    Gemma4UnifiedConfig,
    Gemma4UnifiedForConditionalGeneration,
    Gemma4UnifiedImageProcessor,
    Gemma4UnifiedProcessor,
    Gemma4UnifiedVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.gemma4 import PATCH_SIZE, POOLING, Gemma4Adapter

# rows of the factorised position table, per axis: more than the patches along any side
POSITION_TABLE = 128


class Gemma4UnifiedAdapter(Gemma4Adapter):
    """Gemma 4 Unified checkpoints (model_type ``gemma4_unified``, ``google/gemma-4-*``):
    Gemma 4's special tokens, placeholder and image-block attention (bidirectional among the
    image's tokens through ``mm_token_type_ids``, never over later text), so prefix reuse is
    valid as for ``gemma4``. Tiny key as for ``gemma4``; ``vision_hidden_size`` is the embedder's
    width, and ``vision_layers`` and ``vision_attention_heads`` go unused (there is no tower).
    """

    config_class = Gemma4UnifiedConfig
    model_class = Gemma4UnifiedForConditionalGeneration
    processor_class = Gemma4UnifiedProcessor
    image_processor_class = Gemma4UnifiedImageProcessor
    video_processor_class = Gemma4UnifiedVideoProcessor
    feature_extractor_class = Gemma4UnifiedAudioFeatureExtractor

    family = "gemma4_unified"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        text = super().tiny_text_config(tokenizer, spec)
        # the unified decoder has no per-layer input embeddings
        del text["hidden_size_per_layer_input"], text["vocab_size_per_layer_input"]
        return text

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict:
        return {
            "patch_size": PATCH_SIZE,
            "pooling_kernel_size": POOLING,
            "mm_embed_dim": spec["vision_hidden_size"],
            "output_proj_dims": spec["vision_hidden_size"],  # the embedder's width, projected
            "mm_posemb_size": POSITION_TABLE,
        }
