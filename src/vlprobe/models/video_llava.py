"""Video-LLaVA: LLaVA's design with a LanguageBind image tower (CLIP-style ViT) and a separate
video tower over one Vicuna decoder; images take the image tower's path, which is the one probed
here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from transformers import (
    PreTrainedTokenizerBase,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
)

from vlprobe.models.llava import PATCH_SIZE, LlavaAdapter


class VideoLlavaAdapter(LlavaAdapter):
    """Video-LLaVA checkpoints converted to transformers (model_type ``video_llava``,
    ``LanguageBind/Video-LLaVA-7B-hf``), on images: LLaVA's special tokens and ``<video>``, its
    CLIP feature choice (penultimate layer, CLS dropped). Nothing else differs from the generic
    adapter; tiny key as for ``llava``.
    """

    family = "video_llava"
    special_tokens = replace(LlavaAdapter.special_tokens, extra=("<image>", "<video>"))
    tiny_chat_template = None  # the converted checkpoint's template is not available offline

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[VideoLlavaForConditionalGeneration, VideoLlavaProcessor]:
        size = spec["image_size"]
        processor = VideoLlavaProcessor(
            image_processor=VideoLlavaImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            video_processor=VideoLlavaVideoProcessor(),  # required by the processor; unused
            **cls.tiny_processor_kwargs(tokenizer),
        )
        config = VideoLlavaConfig(
            **cls.tiny_config_kwargs(tokenizer, spec),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_seq_length=(size // PATCH_SIZE) ** 2,
        )
        return VideoLlavaForConditionalGeneration(config), processor
