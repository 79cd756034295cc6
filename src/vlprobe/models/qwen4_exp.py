"""Qwen4-Exp: Qwen3.5's vision tower and processor before a hybrid mixture-of-experts decoder
(gated-delta-net linear attention between M-RoPE attention layers whose keys a token indexer
selects in compressed blocks), several residual streams per token (hyper-connections) and
hashed n-gram embeddings injected into some linear layers (PLE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen4ExpConfig,
    Qwen4ExpForConditionalGeneration,
)

from vlprobe.models.base import HyperConnectionsMixin
from vlprobe.models.qwen3_5 import Qwen3_5MoeAdapter

INDEX_BLOCK = 4  # keys averaged into one indexer block


class Qwen4ExpAdapter(HyperConnectionsMixin, Qwen3_5MoeAdapter):
    """Qwen4-Exp checkpoints (model_type ``qwen4_exp``, ``Qwen/Qwen4-Exp``): Qwen3-VL's processor,
    special tokens and M-RoPE index (the model's ``get_rope_index``).

    Hidden states. Each decoder layer receives ``hc_count`` (4) residual streams per token,
    concatenated ``[batch, tokens, streams * hidden]``; hidden state ``i < num_layers`` is their
    mean over the streams, hidden state ``num_layers`` the output of the learned mixer that
    collapses them (``hyper_connection_mixer``, normed inside; the decoder has no final norm).

    Prefix reuse: the linear layers' recurrent and convolution states, the n-gram context of
    the PLE layers (padding read as EOS) and the indexer's keys and 3-d positions (kept on the
    first indexed layer's ``DynamicIndexedLayer``) are all in the cache and are copied with it
    (``reorder_cache``); the indexer forms its blocks from each query's visible keys, padding
    excluded, so a continued pass and a left-padded row equal the row alone in one pass.

    Tiny keys as for ``qwen3_vl``.
    """

    config_class = Qwen4ExpConfig
    model_class = Qwen4ExpForConditionalGeneration
    family = "qwen4_exp"
    final_norm_name = "hyper_connection_mixer"

    def layer_input_state(self, layer_input: torch.Tensor) -> torch.Tensor:
        # [batch, tokens, streams * hidden]: the streams' mean
        return layer_input.unflatten(-1, (-1, self.hidden_size)).mean(dim=2)

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        text = super().tiny_text_config(tokenizer, spec)
        return {
            **text,
            "hc_lowrank": spec["hidden_size"] // 2,
            # hashed n-grams into the first (linear) layer; tables of a few thousand rows
            "ple_layer_ids": [1],
            "heads_per_ngram": 2,
            "ngram_vocab_size_base": 1000,
            "split_ngram_parts": 1,
            "indexer_n_heads": 2,
            "indexer_kv_heads": 1,  # the only count the model takes
            "indexer_head_dim": text["head_dim"] // 4,  # the rotary part, as in the real model
            # two blocks of 4 keys (and the incomplete last block) per query: sparse over the
            # tiny prompts, so the family's tests cover the selection
            "indexer_compress_ratio": INDEX_BLOCK,
            "indexer_budget": 2 * INDEX_BLOCK,
        }
