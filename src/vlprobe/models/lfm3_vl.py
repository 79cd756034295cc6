"""LFM3-VL (Liquid AI): a vision encoder of gated 2-D convolution and attention layers over
16-pixel patches at the image's own aspect ratio, a 2 x 2 merging projector, and an LFM3 decoder:
LFM2's short causal convolutions with sliding-window and full attention layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Lfm3VlConfig,
    Lfm3VlForConditionalGeneration,
    Lfm3VlProcessor,
    PreTrainedTokenizerBase,
    Qwen3VLVideoProcessor,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.lfm2_vl import Lfm2VlAdapter
from vlprobe.models.qwen2_vl import vision_token_ids
from vlprobe.models.qwen3_vl import MERGE_SIZE, PATCH_SIZE, Qwen3VLAdapter
from vlprobe.models.tiny import SpecialTokens

# no wider than the smallest tiny image block (min_image_tokens), so that every reused prefix
# crosses the window, as a real image does (640 x 480 gives 300 tokens; the real window is 256)
SLIDING_WINDOW = 4


class Lfm3VlAdapter(Lfm2VlAdapter):
    """LFM3-VL checkpoints (model_type ``lfm3_vl``, ``LiquidAI/LFM3-VL-*``). LFM2-VL's decoder
    layout (final norm ``embedding_norm``; conv states in the cache, so prefix reuse holds as
    there), but Qwen3-VL's processor: ``<|image_pad|>`` expands to one token per merged 2 x 2
    patches, with plain 1-d positions in the decoder (no M-RoPE). The sliding-window layers of a
    suffix pass see the last window of the reused prefix, as in the full pass.

    Tiny keys: ``min_image_tokens`` (4) and ``max_image_tokens`` (16) per image.
    """

    family = "lfm3_vl"
    # LFM2's text tokens; the vision tokens are those the processor defaults to
    special_tokens = SpecialTokens(
        bos="<|startoftext|>",
        eos="<|im_end|>",
        pad="<|pad|>",
        extra=(
            "<|im_start|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ),
    )

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Lfm3VlForConditionalGeneration, Lfm3VlProcessor]:
        processor = Lfm3VlProcessor(
            image_processor=Qwen3VLAdapter.tiny_image_processor(spec),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),  # required by the processor; unused here
        )
        layers = spec["num_layers"]
        # each of the real decoder's layer kinds, in turn
        kinds = ("conv", "sliding_attention", "full_attention")
        config = Lfm3VlConfig(
            vision_config={
                "hidden_size": spec["vision_hidden_size"],
                "intermediate_size": 2 * spec["vision_hidden_size"],
                "num_hidden_layers": spec["vision_layers"],
                "num_attention_heads": spec["vision_attention_heads"],
                "num_key_value_heads": spec["vision_attention_heads"],
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
                # conv and attention layers, as in the real encoder
                "layer_types": [
                    "conv" if i % 2 == 0 else "full_attention" for i in range(spec["vision_layers"])
                ],
            },
            text_config={
                "model_type": "lfm3",
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "layer_types": [kinds[i % len(kinds)] for i in range(layers)],
                "sliding_window": SLIDING_WINDOW,
            },
            projector_hidden_size=spec["hidden_size"],
            **vision_token_ids(tokenizer),
        )
        return Lfm3VlForConditionalGeneration(config), processor
