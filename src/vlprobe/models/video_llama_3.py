"""VideoLLaMA3: a SigLIP-initialised ViT at the image's own resolution (2-d rotary positions, one
token per 14 x 14 patch for images), an MLP projector and a Qwen2.5 decoder with plain 1-d
rotary positions; videos take the same tower with token compression, unused here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    PreTrainedTokenizerBase,
    Qwen2Config,
    VideoLlama3Config,
    VideoLlama3ForConditionalGeneration,
    VideoLlama3ImageProcessor,
    VideoLlama3Processor,
    VideoLlama3VideoProcessor,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.qwen2_vl import Qwen2VLAdapter

PATCH_SIZE = 14  # images are not merged: one token per patch


class VideoLlama3Adapter(LoadedVLM):
    """VideoLLaMA3 checkpoints converted to transformers (model_type ``video_llama_3``,
    ``lkhl/VideoLLaMA3-2B-Image-HF``), on images: Qwen2-VL's special tokens (the processor's
    default ``<|image_pad|>`` placeholder). Causal over image tokens, so prefix reuse is valid.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) bound the image tokens
    per image, through the image processor's pixel limits.
    """

    family = "video_llama_3"
    special_tokens = Qwen2VLAdapter.special_tokens
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    # its model's get_rope_index exists only to raise (M-RoPE inherited from Qwen2-VL and
    # removed): the decoder takes the plain 1-d positions
    rope_index_function: ClassVar[None] = None

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[VideoLlama3ForConditionalGeneration, VideoLlama3Processor]:
        pixels_per_token = PATCH_SIZE**2
        processor = VideoLlama3Processor(
            image_processor=VideoLlama3ImageProcessor(
                min_pixels=spec["min_image_tokens"] * pixels_per_token,
                max_pixels=spec["max_image_tokens"] * pixels_per_token,
            ),
            tokenizer=tokenizer,
            video_processor=VideoLlama3VideoProcessor(),  # required by the processor; unused
        )
        config = VideoLlama3Config(
            text_config=Qwen2Config(**text_config_kwargs(tokenizer, spec)),
            vision_config={**vision_config_kwargs(spec), "patch_size": PATCH_SIZE},
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        )
        return VideoLlama3ForConditionalGeneration(config), processor
