"""Unlimited-OCR: a SAM ViT-B whose downsampled features a CLIP encoder reads (both concatenated),
a linear projector, and a DeepSeek mixture-of-experts decoder whose "reference sliding" layers
attend to the whole prefill but to later tokens through a sliding window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PreTrainedTokenizerBase,
    UnlimitedOcrConfig,
    UnlimitedOcrForConditionalGeneration,
    UnlimitedOcrImageProcessor,
    UnlimitedOcrProcessor,
)

from vlprobe.models.base import LoadedVLM, sam_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

SAM_PATCH = 16
DOWNSAMPLE = 4  # SAM's two stride-2 convolutions: one image token per 64 x 64 pixels
CLIP_PATCH = 14


def deepseek_ocr_sam_config(
    spec: Mapping[str, Any],
    image_size: int,
    patch_size: int,
    window_size: int,
    global_attn_indexes: list[int],
) -> dict[str, Any]:
    """A tiny DeepSeek-OCR SAM tower's config (Unlimited-OCR's, DeepSeek-OCR 2's): then the two
    stride-2 convolutions, whose last channels the next encoder reads."""
    vision = spec["vision_hidden_size"]
    return {
        **sam_config(spec, image_size, patch_size, window_size, global_attn_indexes),
        "output_channels": vision // 2,
        "downsample_channels": [vision // 2, vision],
    }


def moe_text_config(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A tiny DeepSeek-OCR mixture-of-experts decoder's config (Unlimited-OCR's, DeepSeek-OCR
    2's): a dense first layer, then mixture-of-experts ones, as in the real models."""
    return {
        **text_config_kwargs(tokenizer, spec),
        "mlp_layer_types": ["dense"] + ["sparse"] * (spec["num_layers"] - 1),
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": spec["hidden_size"] // 2,
    }


class UnlimitedOcrAdapter(LoadedVLM):
    """Unlimited-OCR checkpoints (model_type ``unlimited_ocr``, ``baidu/Unlimited-OCR``).

    The placeholder ``<image>`` expands to the global view's rows of tokens, each closed by a
    newline embedding, then a view separator (and, for a large image, the tiles' rows before
    them); plain 1-d positions.

    No prefix reuse: in a pass that continues a cache, the decoder's reference-sliding layers
    attend to the cached prefill in full but to the new tokens only through their sliding
    window, while one pass over the whole text treats all of it as prefill; the states of a
    long prompt would differ, so the plain path always runs.

    Tiny key: ``image_size`` (128), the global view's side and the tile size: ``image_size /
    64`` tokens per side, plus one newline per row.
    """

    family = "unlimited_ocr"
    special_tokens = SpecialTokens(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜▁pad▁｜>",
        extra=("<image>",),
    )
    tiny_defaults = {"image_size": 128}
    # the checkpoint's template is not available offline: tiny models run in raw format only
    prefix_reuse = False  # reference-sliding layers: see the class docstring

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[UnlimitedOcrForConditionalGeneration, UnlimitedOcrProcessor]:
        size = spec["image_size"]
        vision = spec["vision_hidden_size"]
        processor = UnlimitedOcrProcessor(
            image_processor=UnlimitedOcrImageProcessor(
                size={"height": size, "width": size}, tile_size=size, maximum_pad_value=size
            ),
            tokenizer=tokenizer,
            patch_size=SAM_PATCH,
            downsample_ratio=DOWNSAMPLE,
        )
        layers = spec["vision_layers"]
        config = UnlimitedOcrConfig(
            vision_config={
                # windowed, then global
                "sam_config": deepseek_ocr_sam_config(spec, size, SAM_PATCH, 4, [layers - 1]),
                "encoder_config": {
                    "hidden_size": vision,
                    "intermediate_size": 2 * vision,
                    "num_hidden_layers": layers,
                    "num_attention_heads": spec["vision_attention_heads"],
                    # its positions: one per downsampled SAM feature
                    "image_size": size // SAM_PATCH // DOWNSAMPLE * CLIP_PATCH,
                    "patch_size": CLIP_PATCH,
                },
            },
            text_config=moe_text_config(tokenizer, spec),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
        return UnlimitedOcrForConditionalGeneration(config), processor
