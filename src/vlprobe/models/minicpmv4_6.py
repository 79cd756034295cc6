"""MiniCPM-V 4.6: a SigLIP2 encoder with a window-attention merger inside, an MLP merger and a
Qwen3.5 decoder (gated-delta-net linear attention interleaved with full attention)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    MiniCPMV4_6ImageProcessor,
    MiniCPMV4_6Processor,
    MiniCPMV4_6VideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MAX_SLICES = 4  # the real processor allows 9; a tiny model needs few
FULL_ATTENTION_EVERY = 2  # the real decoder has one full-attention layer in 4; tiny ones in 2
LINEAR_HEAD_DIM = 16


class MiniCPMV4_6Adapter(LoadedVLM):
    """MiniCPM-V 4.6 checkpoints (model_type ``minicpmv4_6``, ``openbmb/MiniCPM-V-4_6``).

    The image goes on its own line; the processor expands the placeholder to an image-id tag,
    the image's tokens and those of its slices. The decoder's linear-attention layers keep a
    recurrent state in the cache instead of keys and values; prefix reuse copies it like them.

    Tiny key: ``image_size`` (112), the encoder resolution; an image of at most that size gives
    ``(side / 14 / 4)`` tokens per side (two 2 x 2 merges).
    """

    family = "minicpmv4_6"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>",),
        named={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "image_start_token": "<image>",
            "image_end_token": "</image>",
            "slice_start_token": "<slice>",
            "slice_end_token": "</slice>",
            "image_id_start_token": "<image_id>",
            "image_id_end_token": "</image_id>",
        },
    )
    tiny_defaults = {"image_size": 112}
    # tiny_chat_template: none; the checkpoint's template is not available offline (see
    # chat_templates/README.md), so tiny models run in raw format only
    image_token_suffix = "\n"  # the image on its own line, as in the chat template
    # the tiny model's classes; MiniCPM-V 4.7's take the same arguments (and a few more ids)
    config_class: ClassVar[type] = MiniCPMV4_6Config
    model_class: ClassVar[type] = MiniCPMV4_6ForConditionalGeneration
    processor_class: ClassVar[type] = MiniCPMV4_6Processor
    image_processor_class: ClassVar[type] = MiniCPMV4_6ImageProcessor
    video_processor_class: ClassVar[type] = MiniCPMV4_6VideoProcessor

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        size = spec["image_size"]
        processor = cls.processor_class(
            image_processor=cls.image_processor_class(
                scale_resolution=size, patch_size=PATCH_SIZE, max_slice_nums=MAX_SLICES
            ),
            video_processor=cls.video_processor_class(  # required by the processor; unused
                scale_resolution=size, patch_size=PATCH_SIZE
            ),
            tokenizer=tokenizer,
        )
        n_layers = spec["num_layers"]
        config = cls.config_class(
            text_config={
                "model_type": "qwen3_5_text",
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "layer_types": [
                    "full_attention" if (i + 1) % FULL_ATTENTION_EVERY == 0 else "linear_attention"
                    for i in range(n_layers)
                ],
                "linear_num_key_heads": spec["num_key_value_heads"],
                "linear_num_value_heads": spec["num_key_value_heads"],
                "linear_key_head_dim": LINEAR_HEAD_DIM,
                "linear_value_head_dim": LINEAR_HEAD_DIM,
            },
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
            },
            # the window-attention merger sits after the first half of the encoder
            insert_layer_id=spec["vision_layers"] // 2 - 1,
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
            **cls.tiny_config_extras(tokenizer, spec),
        )
        return cls.model_class(config), processor

    @classmethod
    def tiny_config_extras(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Further config arguments of the tiny model: here the resolution that the config
        states besides the encoder's (MiniCPM-OCR's config has no such field)."""
        return {"image_size": spec["image_size"]}
