"""LLaVA-NeXT-Video: LLaVA-NeXT with video input (frames pooled 2 x 2 per frame); images take
LLaVA-NeXT's path unchanged, which is the one probed here."""

from __future__ import annotations

from dataclasses import replace

from transformers import (
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.llava_next import LlavaNextAdapter


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LLaVA-NeXT-Video checkpoints converted to transformers (model_type ``llava_next_video``,
    ``llava-hf/LLaVA-NeXT-Video-*-hf``), on images: LLaVA's special tokens and ``<video>``.
    Nothing else differs from the generic adapter; tiny key as for ``llava_next``."""

    config_class = LlavaNextVideoConfig
    model_class = LlavaNextVideoForConditionalGeneration
    processor_class = LlavaNextVideoProcessor

    family = "llava_next_video"
    special_tokens = replace(LlavaAdapter.special_tokens, extra=("<image>", "<video>"))
    tiny_chat_template = None  # not LLaVA-NeXT-Mistral's; its own was not found verbatim

    @classmethod
    def tiny_video(cls, tokenizer: PreTrainedTokenizerBase) -> tuple[dict, dict]:
        return (
            {"video_processor": LlavaNextVideoVideoProcessor()},  # required; unused on images
            {"video_token_index": tokenizer.convert_tokens_to_ids("<video>")},
        )
