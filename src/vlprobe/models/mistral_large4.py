"""Mistral Large 4: Mistral 3's Pixtral encoder and patch merger before a decoder of latent
attention with DeepSeek-style sparse attention (an indexer picks each query's top keys), query
scales that grow with the log of the position, and a mixture of experts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    BatchFeature,
    MistralLarge4Config,
    MistralLarge4ForConditionalGeneration,
    PixtralProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.mistral_large4.modeling_mistral_large4 import (
    MistralLarge4TextSoftmaxScaling,
)
from transformers.utils import ModelOutput

from vlprobe.models.base import latent_attention_kwargs, routed_experts_kwargs, text_config_kwargs
from vlprobe.models.mistral3 import Mistral3Adapter


def unpadded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count each row's own tokens from 0, skipping its padding (0 there)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class MistralLarge4Adapter(Mistral3Adapter):
    """Mistral Large 4 checkpoints (model_type ``mistral_large4``); Pixtral's processor and
    Mistral 3's tokens.

    Its attention and indexer scale every query by ``scale * log(position + 1) + bias``: an
    absolute position, so the plain 0, 1, 2, ... over a padded batch would make a row's states
    depend on its padding. Every pass gets positions that count the row's own tokens (as
    generation does), and the suffixes of a reused prefix continue from the prefix's length.

    Tiny key: ``image_size`` (112), as for mistral3.
    """

    family = "mistral_large4"
    config_class = MistralLarge4Config
    model_class = MistralLarge4ForConditionalGeneration

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        # the query scales read absolute positions: count the row's tokens, not its padding
        return super().forward(
            {**inputs, "position_ids": unpadded_positions(inputs["attention_mask"])}, **kwargs
        )

    def prefix_positions(self, inputs: BatchFeature) -> tuple[torch.Tensor, torch.Tensor]:
        mask = inputs["attention_mask"]
        return unpadded_positions(mask), mask.sum(dim=1)

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        layers = spec["num_layers"]
        return {
            "model_type": "mistral_large4_text",
            **text_config_kwargs(tokenizer, spec),
            # latent keys and values for every head (the real config has 64 of 64 heads)
            **latent_attention_kwargs(spec),
            "index_head_dim": 16,
            "index_n_heads": 2,
            # above every tiny sequence's length, so the indexer keeps all keys: with random
            # weights its ReLU scores tie at 0, and ties break by index, which padding shifts
            "index_topk": 256,
            # a layer that runs the indexer, then one reusing its choice, alternately
            "indexer_types": ["full" if i % 2 == 0 else "shared" for i in range(layers)],
            **routed_experts_kwargs(spec),
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, PixtralProcessor]:
        model, processor = super().tiny_model_and_processor(tokenizer, spec)
        # initialised to scale 0 (no position dependence until a checkpoint loads); the tiny
        # model draws the learned slopes, so that positions matter as in the real one
        for module in model.modules():
            if isinstance(module, MistralLarge4TextSoftmaxScaling):
                torch.nn.init.uniform_(module.scale, 0.1, 0.3)
        return model, processor
