"""Gemma 4: a ViT with 2-d rotary positions at the image's own aspect ratio, its patches
average-pooled 3 x 3 into soft tokens, and a Gemma 4 decoder (sliding-window layers interleaved
with global ones; in the compact "E" models also per-layer input embeddings and key/value
sharing across the last layers). The checkpoints' audio tower is not used: image and text only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from transformers import (
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16
POOLING = 3  # soft tokens pool 3 x 3 patches, as in the real model


class Gemma4Adapter(LoadedVLM):
    """Gemma 4 checkpoints (model_type ``gemma4``, ``google/gemma-4-*``).

    The placeholder ``<|image|>`` expands to ``<|image>``, one ``<|image|>`` per soft token and
    ``<image|>``. Where the checkpoint says so (``use_bidirectional_attention: vision``) image
    tokens attend to each other bidirectionally in the sliding-window layers, through the
    processor's ``mm_token_type_ids``; never to text after the image, so prefix reuse is valid
    as for Gemma-3 (the prefix pass gets the ids, text-only suffix passes none).

    Tiny key: ``max_image_tokens`` (70), the soft-token budget per image (one of the image
    processor's 70, 140, 280, 560, 1120).
    """

    # the real classes; Gemma 4 Unified swaps them
    config_class: ClassVar[type] = Gemma4Config
    model_class: ClassVar[type] = Gemma4ForConditionalGeneration
    processor_class: ClassVar[type] = Gemma4Processor
    image_processor_class: ClassVar[type] = Gemma4ImageProcessor
    video_processor_class: ClassVar[type] = Gemma4VideoProcessor
    feature_extractor_class: ClassVar[type] = Gemma4AudioFeatureExtractor

    family = "gemma4"
    special_tokens = SpecialTokens(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        extra=("<mask>",),
        named={
            "image_token": "<|image|>",
            "boi_token": "<|image>",
            "eoi_token": "<image|>",
            # the processor refuses to run without the audio tokens, even on images only
            "audio_token": "<|audio|>",
            "boa_token": "<|audio>",
            "eoa_token": "<audio|>",
            "sot_token": "<|turn>",
            "eot_token": "<turn|>",
        },
    )
    tiny_defaults = {"max_image_tokens": 70}
    # a tensor, not an int: with an int the key/value-sharing layers skip every position but
    # the last ones kept, and the layer hooks would see those alone
    logits_to_keep = torch.tensor([-1])

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        layers = spec["num_layers"]
        return {
            **text_config_kwargs(tokenizer, spec),
            "head_dim": head_dim,
            "global_head_dim": 2 * head_dim,  # wider global heads, as in the real model
            "sliding_window": 8,  # shorter than an image, so the window matters
            # sliding layers with a global one every other layer; the last is global
            "layer_types": [
                "full_attention" if i % 2 or i == layers - 1 else "sliding_attention"
                for i in range(layers)
            ],
            # the compact checkpoints' per-layer embeddings and shared keys/values (the
            # last layer reuses those of the last earlier layer of its type)
            "hidden_size_per_layer_input": 8,
            "vocab_size_per_layer_input": len(tokenizer),
            "num_kv_shared_layers": 1 if layers > 2 else 0,
            "use_bidirectional_attention": "vision",
        }

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict:
        vision = vision_config_kwargs(spec)
        return {
            **vision,
            "num_key_value_heads": vision["num_attention_heads"],
            "head_dim": vision["hidden_size"] // vision["num_attention_heads"],
            "patch_size": PATCH_SIZE,
            "pooling_kernel_size": POOLING,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        image_processor = cls.image_processor_class(
            patch_size=PATCH_SIZE,
            pooling_kernel_size=POOLING,
            max_soft_tokens=spec["max_image_tokens"],
        )
        processor = cls.processor_class(
            # both required by the processor; unused for images
            feature_extractor=cls.feature_extractor_class(),
            video_processor=cls.video_processor_class(),
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=spec["max_image_tokens"],
        )
        config = cls.config_class(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config=cls.tiny_vision_config(spec),
            **{
                f"{kind}_token_id": tokenizer.convert_tokens_to_ids(token)
                for kind, token in [
                    ("image", "<|image|>"),
                    ("boi", "<|image>"),
                    ("eoi", "<image|>"),
                    ("audio", "<|audio|>"),
                    ("boa", "<|audio>"),
                    ("video", processor.video_token),
                ]
            },
        )
        return cls.model_class(config), processor
