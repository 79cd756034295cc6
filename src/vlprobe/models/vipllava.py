"""VipLLaVA: LLaVA-1.5 whose projector reads several CLIP layers at once (visual prompts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)

from vlprobe.models.base import text_config_kwargs, vision_config_kwargs
from vlprobe.models.llava import PATCH_SIZE, LlavaAdapter


class VipLlavaAdapter(LlavaAdapter):
    """VipLLaVA checkpoints converted to transformers (model_type ``vipllava``); LLaVA's
    processor and tokens. Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (56), as for LLaVA.
    """

    family = "vipllava"
    tiny_chat_template = None  # VipLLaVA's template is not available offline

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[VipLlavaForConditionalGeneration, LlavaProcessor]:
        size = spec["image_size"]
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        layers = spec["vision_layers"]
        config = VipLlavaConfig(
            vision_config=CLIPVisionConfig(
                **vision_config_kwargs(spec), image_size=size, patch_size=PATCH_SIZE
            ),
            text_config=LlamaConfig(**text_config_kwargs(tokenizer, spec)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            # the real model reads 5 of its 24 CLIP layers; a tiny one reads every layer
            vision_feature_layers=list(range(-layers, 0)),
        )
        return VipLlavaForConditionalGeneration(config), processor
