"""DeepSeek-VL's 7B layout (DeepSeek-VL hybrid): DeepSeek-VL's SigLIP encoder, plus a SAM encoder
over a high-resolution copy of the image whose features, resampled to the same grid, are
concatenated with SigLIP's in the aligner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import (
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridImageProcessor,
    DeepseekVLHybridProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import sam_config
from vlprobe.models.deepseek_vl import DeepseekVLAdapter

HIGH_RES_PATCH_SIZE = 8  # SAM's are 16 pixels, at 1024


class DeepseekVLHybridAdapter(DeepseekVLAdapter):
    """DeepSeek-VL hybrid checkpoints converted to transformers (model_type
    ``deepseek_vl_hybrid``, ``deepseek-community/deepseek-vl-7b-chat``); DeepSeek-VL's tokens and
    placeholder. Nothing differs from the generic adapter.

    Tiny keys: ``image_size`` (32) as for ``deepseek_vl``, and ``high_res_image_size`` (64),
    SAM's input resolution.
    """

    config_class = DeepseekVLHybridConfig
    model_class = DeepseekVLHybridForConditionalGeneration
    processor_class = DeepseekVLHybridProcessor
    image_processor_class = DeepseekVLHybridImageProcessor

    family = "deepseek_vl_hybrid"
    tiny_defaults = {**DeepseekVLAdapter.tiny_defaults, "high_res_image_size": 64}

    @classmethod
    def tiny_high_res(cls, spec: Mapping[str, Any]) -> tuple[dict, dict]:
        size = spec["high_res_image_size"]
        sam = {
            # windowed attention in all but the global layer
            **sam_config(spec, size, HIGH_RES_PATCH_SIZE, 4, [spec["vision_layers"] - 1]),
            "output_channels": spec["vision_hidden_size"] // 2,
            "num_pos_feats": spec["vision_hidden_size"] // 2,
        }
        return (
            {"high_res_size": {"height": size, "width": size}},
            {"high_res_vision_config": {"model_type": "sam_vision_model", **sam}},
        )

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        model, processor = super().tiny_model_and_processor(tokenizer, spec)
        # transformers initialises the weight of the SAM encoder's global-layer features to
        # zero (trained from scratch); a tiny model needs them to matter
        nn.init.normal_(model.model.high_res_vision_alpha, std=1.0)
        return model, processor
