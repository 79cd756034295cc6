"""MiniMax-M3: a Qwen2-VL-style ViT (14-pixel patches) whose patches an MLP projects and merges
2 x 2, before a mixture-of-experts decoder whose sparse layers attend only to the key blocks that
a "lightning indexer" picks for each query."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    BatchFeature,
    MiniMaxM3SparseForConditionalGeneration,
    MiniMaxM3VLConfig,
    MiniMaxM3VLImageProcessor,
    MiniMaxM3VLProcessor,
    MiniMaxM3VLVideoProcessor,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import DynamicCache
from transformers.utils import ModelOutput

from vlprobe.models.base import LoadedVLM, ModelError, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PIXELS_PER_TOKEN = 28 * 28  # 14-pixel patches merged 2 x 2
SPARSE_ATTENTION = "minimax_m3_sparse"  # the config's layer type of indexer layers


class MiniMaxM3VLAdapter(LoadedVLM):
    """MiniMax-M3 checkpoints (model_type ``minimax_m3_vl``, ``MiniMaxAI/MiniMax-M3``).

    The processor expands ``]<]image[>[`` into the image's tokens between ``]<]start of
    image[>[`` and ``]<]end of image[>[``, which all stay in a reused prefix; plain 1-d
    positions.

    Prefix reuse: the indexer scores a query's keys causally and caches its own keys
    (``MiniMaxM3VLSparseCacheLayer``), so a pass continuing a cache equals one pass over the
    same text. Its key blocks are counted from the first cache slot, not from a row's first
    token: a left-padded row (a prefix batch, or a left-padded plain batch) has other blocks
    than the row alone, which changes what a query attends to once a sequence spans more than
    ``index_topk_blocks`` blocks (2,048 tokens at the config's defaults; the processor's largest
    image takes 576). Below that every block is kept and attention is dense; past it, a
    left-padded pass fails with a ModelError rather than give other values.

    Tiny keys: ``min_image_tokens`` (4) and ``max_image_tokens`` (16) bound the image tokens per
    image, through the image processor's pixel limits.
    """

    family = "minimax_m3_vl"
    # the processor's tokens; the checkpoint's BOS and EOS strings are not in transformers' code
    special_tokens = SpecialTokens(
        eos="<eos>",
        pad="<pad>",
        extra=(
            MiniMaxM3VLProcessor.IMAGE_TOKEN,
            MiniMaxM3VLProcessor.VIDEO_TOKEN,
            MiniMaxM3VLProcessor.VISION_START_TOKEN,
            MiniMaxM3VLProcessor.VISION_END_TOKEN,
        ),
    )
    tiny_defaults = {"min_image_tokens": 4, "max_image_tokens": 16}

    @property
    def image_token_ids(self) -> list[int]:
        return [
            self.processor.image_token_id,
            self.processor.vision_start_token_id,
            self.processor.vision_end_token_id,
        ]

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        self._check_padding(inputs["attention_mask"])
        return super().forward(inputs, **kwargs)

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        self._check_padding(inputs["attention_mask"])  # the cached tokens' mask and the new
        return super().forward_cached(inputs, cache, **kwargs)

    def _check_padding(self, mask: torch.Tensor) -> None:
        """Refuse a left-padded pass longer than the indexer's dense span (see the class)."""
        text = self.model.config.get_text_config()
        dense = text.index_topk_blocks * text.index_block_size
        if mask.shape[1] > dense and not bool(mask[:, 0].all()):
            raise ModelError(
                f"model {self.name!r}: a left-padded batch of {mask.shape[1]} tokens, more than "
                f"the {dense} that MiniMax-M3's indexer keeps dense; its key blocks count from "
                "the first slot, so padding would change the values: set batch_size: 1"
            )

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[MiniMaxM3SparseForConditionalGeneration, MiniMaxM3VLProcessor]:
        processor = MiniMaxM3VLProcessor(
            image_processor=MiniMaxM3VLImageProcessor(
                min_pixels=spec["min_image_tokens"] * PIXELS_PER_TOKEN,
                max_pixels=spec["max_image_tokens"] * PIXELS_PER_TOKEN,
            ),
            tokenizer=tokenizer,
            video_processor=MiniMaxM3VLVideoProcessor(),  # required by the processor; unused
        )
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        layers = spec["num_layers"]
        expert_size = spec["intermediate_size"] // 4
        config = MiniMaxM3VLConfig(
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": head_dim,
                # half of each head rotates, as in the real model (64 of 128)
                "rotary_dim": head_dim // 2,
                "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5},
                # indexer layers between full-attention ones; a dense MLP first, then experts
                "layer_types": [
                    SPARSE_ATTENTION if i % 2 == 0 else "full_attention" for i in range(layers)
                ],
                "mlp_layer_types": ["dense" if i == 0 else "sparse" for i in range(layers)],
                "dense_intermediate_size": spec["intermediate_size"],
                "intermediate_size": expert_size,
                "shared_intermediate_size": expert_size,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "index_n_heads": spec["num_key_value_heads"],
                "index_head_dim": head_dim,
                # blocks of 4 keys; more blocks kept than any tiny prompt spans, so attention
                # is dense, as it is for real prompts (see the class docstring)
                "index_block_size": 4,
                "index_topk_blocks": 32,
            },
            vision_config=vision_config_kwargs(spec),
            projector_hidden_size=spec["hidden_size"],
            image_token_index=tokenizer.convert_tokens_to_ids(MiniMaxM3VLProcessor.IMAGE_TOKEN),
            video_token_index=tokenizer.convert_tokens_to_ids(MiniMaxM3VLProcessor.VIDEO_TOKEN),
        )
        return MiniMaxM3SparseForConditionalGeneration(config), processor
