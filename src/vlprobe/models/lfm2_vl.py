"""LFM2-VL (Liquid AI): a SigLIP2 NaFlex encoder at the image's own aspect ratio, pixel-unshuffled
2 x 2 and projected into an LFM2 decoder, a hybrid of short causal convolutions and grouped-query
attention layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16  # the real encoder's patches
DOWNSAMPLE = 2  # pixel unshuffle: one image token per 2 x 2 patches


class Lfm2VlAdapter(LoadedVLM):
    """LFM2-VL checkpoints (model_type ``lfm2_vl``, ``LiquidAI/LFM2-VL-*``). The placeholder
    ``<image>`` expands to ``<|image_start|>``, one ``<image>`` per feature (per tile and a
    thumbnail for large images, each tile after its ``<|img_row_R_col_C|>``) and
    ``<|image_end|>``.

    Prefix reuse is valid: the convolution layers are causal (they mix each token with the two
    before it) and zero the padding, so a prefix's conv states, like its keys and values, do not
    depend on the text that follows; the cache carries both.

    Tiny keys: ``min_image_tokens`` (4) and ``max_image_tokens`` (16) per image; no tiling.
    """

    family = "lfm2_vl"
    special_tokens = SpecialTokens(
        bos="<|startoftext|>",
        eos="<|im_end|>",
        pad="<|pad|>",
        extra=("<|im_start|>", "<|img_thumbnail|>", "<|img_row_1_col_1|>"),
        named={
            "image_token": "<image>",
            "image_start_token": "<|image_start|>",
            "image_end_token": "<|image_end|>",
        },
    )
    tiny_defaults = {"min_image_tokens": 4, "max_image_tokens": 16}
    # LFM2 names its final norm so (despite the name, it follows the last layer)
    final_norm_name = "embedding_norm"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Lfm2VlForConditionalGeneration, Lfm2VlProcessor]:
        processor = Lfm2VlProcessor(
            image_processor=Lfm2VlImageProcessor(
                do_image_splitting=False,  # tiles only for images beyond max_image_tokens
                min_image_tokens=spec["min_image_tokens"],
                max_image_tokens=spec["max_image_tokens"],
                encoder_patch_size=PATCH_SIZE,
                downsample_factor=DOWNSAMPLE,
            ),
            tokenizer=tokenizer,
        )
        layers = spec["num_layers"]
        config = Lfm2VlConfig(
            vision_config={
                "model_type": "siglip2_vision_model",
                **vision_config_kwargs(spec),
                "patch_size": PATCH_SIZE,
                "num_patches": spec["max_image_tokens"] * DOWNSAMPLE**2,
            },
            text_config={
                "model_type": "lfm2",
                **text_config_kwargs(tokenizer, spec),
                # conv and attention layers alternate, as in the real decoders (10 conv, 6 attn)
                "layer_types": ["conv" if i % 2 == 0 else "full_attention" for i in range(layers)],
                "block_auto_adjust_ff_dim": False,  # keep intermediate_size as given
            },
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            projector_hidden_size=spec["hidden_size"],
            downsample_factor=DOWNSAMPLE,
        )
        return Lfm2VlForConditionalGeneration(config), processor
