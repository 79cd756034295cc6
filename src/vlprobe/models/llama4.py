"""Llama 4 (Scout, Maverick): a ViT over 336-pixel tiles plus a global view, pixel-shuffled to
one token per 2 x 2 patches, and a mixture-of-experts decoder whose layers attend within chunks
of tokens with RoPE, every fourth layer over the whole sequence without positions (NoPE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
PIXEL_SHUFFLE_RATIO = 0.5  # 2 x 2 patches per image token, as in the real models


class Llama4Adapter(LoadedVLM):
    """Llama 4 checkpoints (model_type ``llama4``, ``meta-llama/Llama-4-Scout-17B-16E-Instruct``).
    Nothing differs from the generic adapter: the processor expands ``<|image|>`` into
    ``<|image_start|>``, each tile's ``<|patch|>`` tokens (where the features go) with tile
    separators, the global view's and ``<|image_end|>``; the decoder is causal, so prefix reuse
    is valid. Chunked attention counts chunks from each row's first token (transformers' mask
    skips the left padding), so a left-padded batch and a reused prefix see the same chunks as
    the prompt alone.

    Tiny keys: ``image_size`` (56), the tile side: ``(image_size / 28) ** 2`` tokens per tile;
    ``max_tiles`` (4) tiles at most, plus the global view; ``attention_chunk_size`` (16, real
    8192): the tiny chunks are short enough that the test prompts span several. As in the real
    models the NoPE full-attention layers come every ``no_rope_layer_interval`` layers (here
    every third, real every fourth, so that three tiny layers hold one). The tiny model carries
    the chat template of transformers' Llama4Processor (``chat_templates/llama4.jinja``).
    """

    family = "llama4"
    special_tokens = SpecialTokens(
        bos="<|begin_of_text|>",
        eos="<|eot|>",
        pad="<|finetune_right_pad|>",
        extra=(
            "<|end_of_text|>",
            "<|header_start|>",
            "<|header_end|>",
            "<|image_start|>",
            "<|image_end|>",
            "<|image|>",
            "<|patch|>",
            "<|tile_x_separator|>",
            "<|tile_y_separator|>",
        ),
    )
    tiny_defaults = {"image_size": 56, "max_tiles": 4, "attention_chunk_size": 16}
    tiny_chat_template = "llama4.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Llama4ForConditionalGeneration, Llama4Processor]:
        size = spec["image_size"]
        processor = Llama4Processor(
            image_processor=Llama4ImageProcessor(
                size={"height": size, "width": size}, max_patches=spec["max_tiles"]
            ),
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            pixel_shuffle_ratio=PIXEL_SHUFFLE_RATIO,
        )
        vision = vision_config_kwargs(spec)
        # the pixel shuffle folds 2 x 2 patches into the channels: the adapter MLP's input
        vision["intermediate_size"] = 4 * vision["hidden_size"]
        config = Llama4Config(
            vision_config={
                **vision,
                "image_size": size,
                "patch_size": PATCH_SIZE,
                "pixel_shuffle_ratio": PIXEL_SHUFFLE_RATIO,
                "projector_input_dim": spec["hidden_size"],
                "projector_output_dim": spec["hidden_size"],
                "vision_output_dim": spec["hidden_size"],
            },
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "intermediate_size_mlp": spec["intermediate_size"],
                # routed experts and a shared one in every layer, as in Scout
                "num_local_experts": 4,
                "num_experts_per_tok": 1,
                "interleave_moe_layer_step": 1,
                "attention_chunk_size": spec["attention_chunk_size"],
                "no_rope_layer_interval": 3,
            },
            boi_token_index=tokenizer.convert_tokens_to_ids("<|image_start|>"),
            eoi_token_index=tokenizer.convert_tokens_to_ids("<|image_end|>"),
            image_token_index=tokenizer.convert_tokens_to_ids("<|patch|>"),
        )
        return Llama4ForConditionalGeneration(config), processor
