"""LLaVA-OneVision: a SigLIP vision tower over the image's tiles (anyres), an MLP projector and a
Qwen2 decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerBase,
    Qwen2Config,
    SiglipVisionConfig,
)

from vlprobe.models.base import text_config_kwargs, vision_config_kwargs
from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision checkpoints converted to transformers (model_type ``llava_onevision``,
    ``llava-hf/llava-onevision-*-hf``); the image goes on its own line, as in LLaVA-1.5.

    Tiny key: ``image_size`` (28), the tile resolution. An image is resized to the best of the
    grid pinpoints (1 x 1 to 2 x 2 tiles) and gives ``(image_size / 14) ** 2`` tokens for the
    whole image plus those of its tiles, minus the unpadding, plus one newline token per row.
    """

    family = "llava_onevision"
    special_tokens = SpecialTokens(
        eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>", "<image>", "<video>")
    )
    tiny_defaults = {"image_size": 28}
    tiny_chat_template = "llava_onevision.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
        size = spec["image_size"]
        pinpoints = [[size * rows, size * cols] for rows in (1, 2) for cols in (1, 2)]
        processor = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(
                size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
            ),
            tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(),  # required by the processor; unused
            num_image_tokens=(size // PATCH_SIZE) ** 2,
            vision_feature_select_strategy="full",
        )
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(
                **vision_config_kwargs(spec),
                image_size=size,
                patch_size=PATCH_SIZE,
                vision_use_head=False,
            ),
            text_config=Qwen2Config(**text_config_kwargs(tokenizer, spec)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        return LlavaOnevisionForConditionalGeneration(config), processor
