"""Qwen3-Omni's thinker: Qwen3-VL's vision tower (16-pixel patches, 2 x 2 merger, deepstack) and a
Qwen3 mixture-of-experts decoder with interleaved M-RoPE, beside an audio encoder. Only the image
and text path is used: the audio encoder is built because the model class has one, never run."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLVideoProcessor,
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from vlprobe.models.base import image_text_of_template
from vlprobe.models.qwen2_5_omni_thinker import (
    Qwen2_5OmniThinkerAdapter,
    omni_token_ids,
    thinker_loader,
    tiny_thinker,
)
from vlprobe.models.qwen3_vl import Qwen3VLMoeAdapter
from vlprobe.models.tiny import SpecialTokens


class Qwen3OmniMoeThinkerAdapter(Qwen3VLMoeAdapter):
    """Qwen3-Omni's thinker, the text-generating half of ``Qwen/Qwen3-Omni-30B-A3B-*``:
    checkpoints of it alone (model_type ``qwen3_omni_moe_thinker``), and the thinker of the
    published whole checkpoints (model_type ``qwen3_omni_moe``; the talker is not loaded).
    M-RoPE positions from the model's ``get_rope_index``, which finds an image by the
    ``<|vision_start|>`` before it. Causal over image tokens: prefix reuse is valid.

    Deepstack as in Qwen3-VL: hidden state ``i`` is the input of decoder layer ``i``, the
    deepstack features included at the image tokens of the first layers.

    Tiny keys as for ``qwen3_vl``.
    """

    family = "qwen3_omni_moe_thinker"
    # thinker checkpoints, and the thinker of whole ones (the published Qwen/Qwen3-Omni-*)
    model_types = ("qwen3_omni_moe_thinker", "qwen3_omni_moe")
    auto_model_class = thinker_loader(Qwen3OmniMoeThinkerForConditionalGeneration)
    config_class = Qwen3OmniMoeThinkerConfig
    model_class = Qwen3OmniMoeThinkerForConditionalGeneration
    processor_class = Qwen3OmniMoeProcessor
    # Qwen3's names for the tokens the processor reads as tokenizer attributes
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<|endoftext|>"),
        named={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "audio_token": "<|audio_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )

    image_token_ids = Qwen2_5OmniThinkerAdapter.image_token_ids  # the same rope index

    @functools.cached_property
    def image_placeholder(self) -> str:
        """The chat template's image part; without a template (the tiny models: the checkpoint's
        is not available offline) the image block between its vision tokens, which
        ``get_rope_index`` needs to find the image."""
        tokenizer = self.tokenizer
        return image_text_of_template(self.processor, self.image_token) or (
            f"{tokenizer.vision_bos_token}{self.image_token}{tokenizer.vision_eos_token}"
        )

    @classmethod
    def tiny_audio_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Qwen2.5-Omni's tiny audio encoder with a narrow convolutional front end."""
        audio = Qwen2_5OmniThinkerAdapter.tiny_audio_config(spec)
        return {**audio, "downsample_hidden_size": audio["d_model"]}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        video_processor = Qwen2VLVideoProcessor(patch_size=16)
        return tiny_thinker(
            cls, tokenizer, spec, video_processor, omni_token_ids(tokenizer, cls.special_tokens)
        )
