"""Qwen3.5: Qwen3-VL's vision tower without deepstack (16-pixel patches, 2 x 2 merger) and a hybrid
decoder (gated-delta-net linear attention, three layers in four, between gated full-attention
layers with partial interleaved M-RoPE); the MoE variant routes its MLPs through experts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PreTrainedTokenizerBase,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
)

from vlprobe.models.minicpmv4_6 import FULL_ATTENTION_EVERY, LINEAR_HEAD_DIM
from vlprobe.models.qwen3_vl import Qwen3VLAdapter

# the real models rotate a quarter of each head (head_dim 256, 64 rotary dimensions); tiny heads
# are widened 4 x so that their rotary part is as wide as Qwen3-VL's tiny heads
PARTIAL_ROTARY_FACTOR = 0.25


class Qwen3_5Adapter(Qwen3VLAdapter):
    """Qwen3.5 checkpoints (model_type ``qwen3_5``, ``Qwen/Qwen3.5-*``): Qwen3-VL's processor,
    special tokens and M-RoPE index (the model's ``get_rope_index``). Nothing differs from the
    generic adapter: without deepstack, hidden state ``i`` is ``output_hidden_states[i]``.

    The linear-attention layers keep a recurrent state (and a convolution window) in the cache
    instead of keys and values; it depends only on the tokens before it, so prefix reuse is
    valid, and copying the cache copies it (``reorder_cache``). Tiny keys as for ``qwen3_vl``.
    """

    config_class = Qwen3_5Config
    model_class = Qwen3_5ForConditionalGeneration
    family = "qwen3_5"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        head_dim = 4 * spec["hidden_size"] // spec["num_attention_heads"]
        rotary_half = int(head_dim * PARTIAL_ROTARY_FACTOR) // 2
        third, extra = divmod(rotary_half, 3)  # near-equal sections, as the real 11/11/10 of 32
        return {
            **super().tiny_text_config(tokenizer, spec),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [third + (k < extra) for k in range(3)],
                "mrope_interleaved": True,
                "partial_rotary_factor": PARTIAL_ROTARY_FACTOR,
            },
            "layer_types": [
                "full_attention" if (i + 1) % FULL_ATTENTION_EVERY == 0 else "linear_attention"
                for i in range(spec["num_layers"])
            ],
            "linear_num_key_heads": spec["num_key_value_heads"],
            # twice as many value heads as key heads, as in the 2B and larger models
            "linear_num_value_heads": 2 * spec["num_key_value_heads"],
            "linear_key_head_dim": LINEAR_HEAD_DIM,
            "linear_value_head_dim": LINEAR_HEAD_DIM,
        }

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        vision = super().tiny_vision_config(spec)
        del vision["deepstack_visual_indexes"]  # Qwen3.5's tower has no deepstack
        return vision


class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Qwen3.5 mixture-of-experts checkpoints (model_type ``qwen3_5_moe``,
    ``Qwen/Qwen3.5-35B-A3B`` and larger): Qwen3.5 with routed experts and a shared expert in
    every decoder MLP. Nothing differs from the generic adapter; tiny keys as for ``qwen3_vl``."""

    config_class = Qwen3_5MoeConfig
    model_class = Qwen3_5MoeForConditionalGeneration
    family = "qwen3_5_moe"

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        text = super().tiny_text_config(tokenizer, spec)
        experts = text.pop("intermediate_size") // 2  # the MoE config has no dense MLP width
        return {
            **text,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": experts,
            "shared_expert_intermediate_size": experts,
        }
