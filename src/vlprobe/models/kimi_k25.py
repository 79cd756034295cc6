"""Kimi K2.5 / K2.6: a MoonViT encoder at the image's own resolution (2-D rotary and learned
position embeddings), 2 x 2 patch merging, and a DeepSeek-V3 decoder (latent attention, mixture
of experts) with plain 1-d positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Kimi_K25Config,
    Kimi_K25ForConditionalGeneration,
    Kimi_K25ImageProcessor,
    Kimi_K25Processor,
    Kimi_K25VideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import (
    LoadedVLM,
    latent_attention_kwargs,
    routed_experts_kwargs,
    text_config_kwargs,
    vision_config_kwargs,
)
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2


class KimiK25Adapter(LoadedVLM):
    """Kimi K2.5 and K2.6 checkpoints (model_type ``kimi_k25``, ``moonshotai/Kimi-K2.6``). The
    placeholder ``<|media_pad|>`` expands to one token per merged 2 x 2 patch; the chat template
    wraps it in ``<|media_begin|>image<|media_content|> ... <|media_end|>``. Nothing differs
    from the generic adapter.

    Tiny key: ``image_size`` (112), the longest side an image is resized to at most.
    """

    family = "kimi_k25"
    special_tokens = SpecialTokens(
        bos="[BOS]",
        eos="[EOS]",
        pad="[PAD]",
        unk="[UNK]",
        extra=(
            "<|media_begin|>",
            "<|media_content|>",
            "<|media_end|>",
            "<|media_pad|>",
            "<|kimi_k25_video_placeholder|>",
        ),
    )
    tiny_defaults = {"image_size": 112}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Kimi_K25ForConditionalGeneration, Kimi_K25Processor]:
        size = {"max_height": spec["image_size"], "max_width": spec["image_size"]}
        processor = Kimi_K25Processor(
            image_processor=Kimi_K25ImageProcessor(
                size=size, patch_size=PATCH_SIZE, merge_size=MERGE_SIZE
            ),
            tokenizer=tokenizer,
            video_processor=Kimi_K25VideoProcessor(),  # required by the processor; unused here
        )
        ids = tokenizer.convert_tokens_to_ids
        config = Kimi_K25Config(
            vision_config={
                **vision_config_kwargs(spec),
                "patch_size": PATCH_SIZE,
                "merge_kernel_size": [MERGE_SIZE, MERGE_SIZE],
                # learned position tables, interpolated to the grid: small at tiny sizes
                "pos_emb_height": 16,
                "pos_emb_width": 16,
            },
            text_config={
                "model_type": "deepseek_v3",
                **text_config_kwargs(tokenizer, spec),
                **latent_attention_kwargs(spec),
                "q_lora_rank": spec["hidden_size"] // 2,
                **routed_experts_kwargs(spec),
                "n_group": 1,
                "topk_group": 1,
            },
            projection_hidden_size=spec["vision_hidden_size"],
            image_token_id=ids("<|media_pad|>"),
            video_token_id=ids("<|kimi_k25_video_placeholder|>"),
            vision_start_token_id=ids("<|media_begin|>"),
            vision_end_token_id=ids("<|media_end|>"),
        )
        return Kimi_K25ForConditionalGeneration(config), processor
