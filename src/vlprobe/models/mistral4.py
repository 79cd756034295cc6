"""Mistral Small 4: Mistral 3's Pixtral encoder and patch merger before a Mistral 4 decoder
(DeepSeek-V2-style multi-head latent attention and a mixture of experts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedTokenizerBase

from vlprobe.models.base import latent_attention_kwargs, routed_experts_kwargs, text_config_kwargs
from vlprobe.models.mistral3 import Mistral3Adapter


class Mistral4Adapter(Mistral3Adapter):
    """Mistral Small 4 (``mistralai/Mistral-Small-4-119B-2603``): its config.json is model_type
    ``mistral3`` (``Mistral3ForConditionalGeneration``) with a ``mistral4`` text config, so
    ``family: auto`` gives it family mistral3, which serves it the same way; this family is
    Mistral 3's adapter with the tiny model's decoder of that type. Transformers' top-level type
    ``mistral4`` is the text-only ``Mistral4ForCausalLM``, which has no image token. Nothing
    differs from the generic adapter.

    Tiny key: ``image_size`` (112), as for mistral3.
    """

    family = "mistral4"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        return {
            "model_type": "mistral4",
            **text_config_kwargs(tokenizer, spec),
            # latent keys and values for every head (the real config has 32 of 32 heads)
            **latent_attention_kwargs(spec),
            "q_lora_rank": spec["hidden_size"] // 2,
            **routed_experts_kwargs(spec),  # every real layer is MoE
        }
