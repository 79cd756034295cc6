"""GLM-5.3-Flash: GLM-4.6V's processor layout over a ViT with a convolutional 2 x 2 merger, and a
decoder of Kimi delta attention (linear) layers between latent-attention layers without positions
whose keys a DeepSeek-style indexer selects in pools; every layer reads and writes several
residual streams (manifold-constrained hyper-connections)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    Glm5NextConfig,
    Glm5NextForConditionalGeneration,
    Glm5NextImageProcessor,
    Glm5NextProcessor,
    Glm5NextVideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import HyperConnectionsMixin, text_config_kwargs
from vlprobe.models.glm4v import Glm4vAdapter

LINEAR_HEAD_DIM = 16
INDEX_POOL = 4  # keys per indexer pool (real: 16)


class Glm5NextAdapter(HyperConnectionsMixin, Glm4vAdapter):
    """GLM-5.3-Flash checkpoints (model_type ``glm5_next``, ``zai-org/GLM-5.3-Flash``); GLM-4.6V's
    special tokens, as its processor names them. The placeholder ``<|image|>`` expands to the
    image's tokens; plain positions, which no layer reads (the attention layers get no rotary
    embeddings, their keys' rotary part stays unrotated; the linear ones take none at all).

    Hidden states. Each decoder layer receives ``hc_mult`` (4) residual streams per token
    ``[batch, tokens, streams, hidden]``; hidden state ``i < num_layers`` is their mean over the
    streams (the collapse the model's head applies before its final norm), hidden state
    ``num_layers`` the final norm's output.

    Prefix reuse: the linear-attention layers keep a recurrent state and a convolution window in
    the cache, zeroed inputs at padding leaving them untouched; the indexer caches its keys with
    their padding, pools keys from each row's first token and keeps a query's causal ones, so a
    continued pass and a left-padded row equal the row alone in one pass.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) per image, the image
    processor's own bounds.
    """

    family = "glm5_next"
    config_class = Glm5NextConfig
    model_class = Glm5NextForConditionalGeneration
    processor_class = Glm5NextProcessor
    image_processor_class = Glm5NextImageProcessor
    video_processor_class = Glm5NextVideoProcessor

    def layer_input_state(self, layer_input: torch.Tensor) -> torch.Tensor:
        return layer_input.mean(dim=2)  # [batch, tokens, streams, hidden]: the streams' mean

    @classmethod
    def tiny_image_processor(cls, spec: Mapping[str, Any]) -> Glm5NextImageProcessor:
        return Glm5NextImageProcessor(
            min_image_tokens=spec["min_image_tokens"], max_image_tokens=spec["max_image_tokens"]
        )

    @classmethod
    def tiny_vision_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        # the merger's MLP as wide as the decoder (real: 10240 for 1536)
        return {
            **super().tiny_vision_config(spec),
            "projection_intermediate_size": 2 * spec["hidden_size"],
        }

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        hidden, heads = spec["hidden_size"], spec["num_attention_heads"]
        return {
            **text_config_kwargs(tokenizer, spec),
            "num_key_value_heads": heads,  # latent attention: keys and values for every head
            # linear attention first, then latent attention, alternately (real: 3 in 4 linear)
            "layer_types": [
                "indexed_attention" if i % 2 else "linear_attention"
                for i in range(spec["num_layers"])
            ],
            "mlp_layer_types": ["dense"] + ["sparse"] * (spec["num_layers"] - 1),
            "moe_intermediate_size": spec["intermediate_size"] // 4,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "kv_lora_rank": hidden // 4,
            "q_lora_rank": hidden // 2,
            "qk_nope_head_dim": hidden // heads,
            "v_head_dim": hidden // heads,
            "index_n_heads": 2,
            "index_head_dim": 16,
            # more pools than any tiny prompt has, so the indexer keeps all of them: with
            # random weights its ReLU scores tie at 0, and which tied pool wins depends on how
            # many pools the batch's widest row has
            "index_kpool": INDEX_POOL,
            "index_topk": 64 * INDEX_POOL,
            "linear_num_heads": 2,
            "linear_head_dim": LINEAR_HEAD_DIM,
            "hc_sinkhorn_iters": 4,
        }
