"""Perception LM: Meta's Perception Encoder (a timm ViT) over a thumbnail and tiles, a pooling
MLP projector and a Llama-3 decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PerceptionLMConfig,
    PerceptionLMForConditionalGeneration,
    PerceptionLMImageProcessor,
    PerceptionLMProcessor,
    PerceptionLMVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
POOLING = 2  # the projector pools 2 x 2 patches into one token, as in the real 1B-8B models
MAX_TILES = 4  # the real processor allows 36; a tiny model needs few


class PerceptionLMAdapter(LoadedVLM):
    """Perception LM checkpoints (model_type ``perception_lm``, ``facebook/Perception-LM-*``).
    Nothing differs from the generic adapter.

    Tiny key: ``image_size`` (56), the tile size: ``(image_size / 14 / 2) ** 2`` tokens per tile.
    """

    family = "perception_lm"
    special_tokens = SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        extra=("<|start_header_id|>", "<|end_header_id|>"),
        named={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    tiny_defaults = {"image_size": 56}
    requires = ("timm",)  # the Perception Encoder is a timm model
    tiny_chat_template = "perception_lm.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PerceptionLMForConditionalGeneration, PerceptionLMProcessor]:
        size = spec["image_size"]
        processor = PerceptionLMProcessor(
            image_processor=PerceptionLMImageProcessor(tile_size=size, max_num_tiles=MAX_TILES),
            video_processor=PerceptionLMVideoProcessor(),  # required by the processor; unused
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            pooling_ratio=POOLING,
        )
        config = PerceptionLMConfig(
            vision_config={
                "architecture": "vit_pe_core_large_patch14_336",
                "num_classes": 0,
                "global_pool": "",
                "model_args": {
                    "embed_dim": spec["vision_hidden_size"],
                    "depth": spec["vision_layers"],
                    "num_heads": spec["vision_attention_heads"],
                    "img_size": (size, size),
                    "ref_feat_shape": (size // PATCH_SIZE, size // PATCH_SIZE),
                    "use_post_transformer_norm": False,
                    "init_values": 0.1,
                },
            },
            text_config={"model_type": "llama", **text_config_kwargs(tokenizer, spec)},
            image_token_id=tokenizer.image_token_id,
            video_token_id=tokenizer.video_token_id,
            projector_pooling_ratio=POOLING,
            vision_use_cls_token=True,
        )
        return PerceptionLMForConditionalGeneration(config), processor
