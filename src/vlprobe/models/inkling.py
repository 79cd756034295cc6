"""Inkling: a hierarchical MLP patch encoder (each 40 x 40 pixel patch folded into one image
token), and a mixture-of-experts decoder of sliding-window and full-attention layers with short
causal convolutions on keys, values and outputs and relative position logits instead of rotary
positions; an audio tower too, which vlprobe does not use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    InklingConfig,
    InklingFeatureExtractor,
    InklingForConditionalGeneration,
    InklingImageProcessor,
    InklingProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

IMAGE_TOKEN = "<|unused_200054|>"  # the processors' image placeholder (Inkling's and Inkling-2's)
PATCH_SIZE = 16  # the tiny tower's patch (the real one's: 40 pixels)
MEL_BINS = 8  # the tiny audio tower's mel bins and their quantisation levels
MEL_LEVELS = 16


class InklingAdapter(LoadedVLM):
    """Inkling checkpoints (model_type ``inkling_mm_model``, ``thinkingmachines/Inkling``,
    ``thinkingmachines/Inkling-NVFP4``), whose images vlprobe reads (not their audio).

    The placeholder ``<|unused_200054|>`` expands to one token per 40 x 40 pixel patch, which the
    vision tower encodes alone (an MLP over its pixels, no attention across patches); the
    processor writes nothing around it (the image-span marker ``<|content_image|>`` is an
    ordinary token that it does not insert). The decoder has no rotary positions: its relative
    position logits and sliding windows count cache indices, and its convolutions zero the
    padding, so a reused prefix (left-padded) continued by right-padded suffixes sees the same
    distances as one pass.

    The tiny tokenizer holds the processor's image, audio and span tokens; its end-of-text token
    stands in for the checkpoint's, which transformers' code does not name. The tiny decoder
    puts its one full-attention layer last (the real ones every sixth), a window of 8 tokens and
    relative logits over 16, so the tests' prompts cross both; its first layer is dense, the
    others mixture-of-experts, so both kinds run; its logits are not divided by the muP width
    multiplier (the real 24 would put a tiny model's logits below the tests' tolerances). Its
    vision tower folds 16-pixel patches in one layer per fold (2 x 2 spatially four times, then
    the image's two frames), the chain the tower plans for exactly that many layers.

    Tiny key ``vision_layers`` defaults to 5 here, one per fold: more layers repeat the
    frame fold, each 98,304 channels wide.
    """

    family = "inkling"
    model_types = ("inkling_mm_model",)
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=(IMAGE_TOKEN, "<|unused_200053|>", "<|content_image|>", "<|content_audio_input|>"),
    )
    tiny_defaults = {"vision_layers": 5}
    # the checkpoint's template is not available offline: tiny models run in raw format only

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """The decoder keys that Inkling and Inkling-2 share."""
        layers = spec["num_layers"]
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": head_dim,
            "swa_num_attention_heads": spec["num_attention_heads"],
            "swa_num_key_value_heads": spec["num_key_value_heads"],
            "swa_head_dim": head_dim,
            "sliding_window_size": 8,
            "d_rel": 4,
            "rel_extent": 16,
            "layer_types": ["hybrid_sliding"] * (layers - 1) + ["hybrid"],
            "moe_intermediate_size": spec["intermediate_size"] // 2,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[InklingForConditionalGeneration, InklingProcessor]:
        processor = InklingProcessor(
            feature_extractor=InklingFeatureExtractor(feature_size=MEL_BINS),
            image_processor=InklingImageProcessor(size={"height": PATCH_SIZE, "width": PATCH_SIZE}),
            tokenizer=tokenizer,
            num_dmel_bins=MEL_LEVELS,
        )
        config = InklingConfig(
            text_config={
                **cls.tiny_text_config(tokenizer, spec),
                "mlp_layer_types": ["dense"] + ["sparse"] * (spec["num_layers"] - 1),
                "n_shared_experts": 1,
                "logits_mup_width_multiplier": 1.0,
            },
            vision_config={"patch_size": PATCH_SIZE, "num_hidden_layers": spec["vision_layers"]},
            audio_config={"n_mel_bins": MEL_BINS, "mel_vocab_size": MEL_LEVELS},
            image_token_id=processor.image_token_id,
            audio_token_id=processor.audio_token_id,
            image_bos_token_id=processor.image_bos_token_id,
            audio_bos_token_id=processor.audio_bos_token_id,
        )
        return InklingForConditionalGeneration(config), processor
