"""Cohere Compass (North Vision): Qwen3-VL's vision tower (16-pixel patches, 2 x 2 merger,
deepstack) before a Cohere2 decoder (parallel attention and MLP blocks, sliding-window and
global layers, per-layer-type M-RoPE or none), with Qwen3-VL's processor under Cohere's tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    CohereCompassConfig,
    CohereCompassForConditionalGeneration,
    CohereCompassImageProcessor,
    CohereCompassProcessor,
    CohereCompassVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.aya_vision import cohere2_text_config
from vlprobe.models.cohere2_vision import Cohere2VisionAdapter
from vlprobe.models.qwen3_vl import Qwen3VLAdapter
from vlprobe.models.tiny import SpecialTokens

# the placeholder and vision tokens that the processor names (it reads no tokenizer attributes)
VISION_TOKENS = {
    "image_token_id": "<|IMAGE_PAD|>",
    "video_token_id": "<|VIDEO_PAD|>",
    "vision_start_token_id": "<|VISION_START|>",
    "vision_end_token_id": "<|VISION_END|>",
}


class CohereCompassAdapter(Qwen3VLAdapter):
    """Cohere Compass checkpoints (model_type ``cohere_compass``,
    ``CohereLabs/North-Micro-Vision-Instruct``). The processor expands ``<|IMAGE_PAD|>`` into
    the image's tokens, with ``mm_token_type_ids`` for the model's ``get_rope_index`` (Qwen3-VL's
    M-RoPE positions, which a reused prefix gets as for ``qwen3_vl``). The decoder is causal over
    the image tokens; its sliding-window layers see the same window whether or not a cache is
    continued, so prefix reuse is valid.

    Deepstack as in Qwen3-VL: hidden state ``i`` is the input of decoder layer ``i``, the
    deepstack features included at the image tokens of the first layers.

    The tiny decoder is Aya Vision's tiny Cohere2 (a window shorter than an image, a global layer
    every other layer), with M-RoPE in its sliding-window layers and none in its global ones, the
    per-layer-type rotary positions that the model class allows (NoPE global layers, as in
    Cohere2). The tiny tokenizer has Cohere2's tokens and the processor's vision tokens; no
    chat template is known offline, so the raw placeholder is ``<|IMAGE_PAD|>`` alone.

    Tiny keys as for ``qwen3_vl``.
    """

    family = "cohere_compass"
    config_class = CohereCompassConfig
    model_class = CohereCompassForConditionalGeneration
    # Qwen3-VL's processors under their own names
    processor_class = CohereCompassProcessor
    image_processor_class = CohereCompassImageProcessor
    video_processor_class = CohereCompassVideoProcessor
    special_tokens = SpecialTokens(
        bos=Cohere2VisionAdapter.special_tokens.bos,
        eos=Cohere2VisionAdapter.special_tokens.eos,
        pad=Cohere2VisionAdapter.special_tokens.pad,
        extra=(*Cohere2VisionAdapter.special_tokens.extra, *VISION_TOKENS.values()),
    )

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        rotary = super().tiny_text_config(tokenizer, spec)["rope_parameters"]
        config = cohere2_text_config(tokenizer, spec)
        return {
            **config,
            "model_type": "cohere_compass_text",
            "rope_parameters": {
                "sliding_attention": {**rotary, "rope_theta": 10_000.0},
                "full_attention": None,
            },
        }

    @classmethod
    def tiny_vision_token_ids(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        return {key: tokenizer.convert_tokens_to_ids(token) for key, token in VISION_TOKENS.items()}
