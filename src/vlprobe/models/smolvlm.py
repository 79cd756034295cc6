"""SmolVLM (and SmolVLM2): Idefics3's architecture (SigLIP, pixel-shuffle connector) with a
SmolLM2 decoder, in its own transformers classes and processor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    LlamaConfig,
    PreTrainedTokenizerBase,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from vlprobe.models.base import text_config_kwargs, vision_config_kwargs
from vlprobe.models.idefics3 import PATCH_SIZE, SCALE_FACTOR, Idefics3Adapter


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM checkpoints (model_type ``smolvlm``, ``HuggingFaceTB/SmolVLM2-*``); Idefics3's
    tokens. Nothing else differs from the generic adapter.

    Tiny key: ``image_size`` (64), as for Idefics3.
    """

    family = "smolvlm"
    tiny_chat_template = None  # SmolVLM2's template is not available offline
    requires = ("num2words",)  # its processor writes image grid positions in words

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[SmolVLMForConditionalGeneration, SmolVLMProcessor]:
        size = spec["image_size"]
        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(
                do_image_splitting=False,
                size={"longest_edge": size},
                max_image_size={"longest_edge": size},
            ),
            tokenizer=tokenizer,
            video_processor=SmolVLMVideoProcessor(),  # required by the processor; unused here
            image_seq_len=(size // PATCH_SIZE // SCALE_FACTOR) ** 2,
        )
        config = SmolVLMConfig(
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
            },
            text_config=LlamaConfig(**text_config_kwargs(tokenizer, spec)),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            scale_factor=SCALE_FACTOR,
            pad_token_id=tokenizer.pad_token_id,
        )
        return SmolVLMForConditionalGeneration(config), processor
