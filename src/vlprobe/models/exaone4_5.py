"""EXAONE 4.5: a Qwen2.5-VL-style windowed ViT with 2-D rotary positions and a 2 x 2 patch
merger, before an EXAONE 4 decoder (local sliding-window and global layers, plain 1-d
positions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    Exaone4_5_Config,
    Exaone4_5_ForConditionalGeneration,
    Exaone4_5_Processor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vlprobe.models.base import LoadedVLM, merger_vit_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2


class Exaone4_5Adapter(LoadedVLM):
    """EXAONE 4.5 checkpoints (model_type ``exaone4_5``, ``LGAI-EXAONE/EXAONE-4.5-33B``); the
    placeholder ``<|image_pad|>`` expands to one token per merged 2 x 2 patch (Qwen2-VL's image
    processor). Unlike Qwen2-VL the decoder's positions are plain 1-d ones, so nothing differs
    from the generic adapter.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64), as for qwen2_vl.
    """

    family = "exaone4_5"
    special_tokens = SpecialTokens(
        bos="[BOS]",
        eos="[|endofturn|]",
        pad="[PAD]",
        unk="[UNK]",
        extra=("[|system|]", "[|user|]", "[|assistant|]", "<|image_pad|>", "<|video_pad|>"),
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    # the tiny model's classes; HyperCLOVA X Vision V2's take the same arguments
    config_class: ClassVar[type] = Exaone4_5_Config
    model_class: ClassVar[type] = Exaone4_5_ForConditionalGeneration
    processor_class: ClassVar[type] = Exaone4_5_Processor

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        processor = cls.processor_class(
            image_processor=Qwen2VLImageProcessor(
                min_pixels=spec["min_image_tokens"] * pixels_per_token,
                max_pixels=spec["max_image_tokens"] * pixels_per_token,
            ),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),  # required by the processor; unused here
        )
        config = cls.config_class(
            vision_config={
                **merger_vit_config(spec, PATCH_SIZE, MERGE_SIZE),
                "num_key_value_heads": spec["vision_attention_heads"],
                "fullatt_block_indexes": [spec["vision_layers"] - 1],  # windowed, then full
            },
            text_config=cls.tiny_text_config(tokenizer, spec),
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_text_config(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The tiny decoder's config."""
        return {
            "model_type": "exaone4",
            **text_config_kwargs(tokenizer, spec),
            # local layers then a global one, as in the real pattern; the window spans every
            # tiny sequence
            "sliding_window": 512,
            "sliding_window_pattern": spec["num_layers"],
        }
