"""Inkling-2: a ViT whose 2 x 2 merged patch features an MLP projects, one per image token, and
Inkling's decoder with attention residuals (each layer reads a learned mix of earlier blocks'
states), gated attention with sinks, and no dense or shared experts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Inkling2Config,
    Inkling2ForConditionalGeneration,
    Inkling2ImageProcessor,
    Inkling2Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.inkling import IMAGE_TOKEN, InklingAdapter
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 20  # the real tower's: one image token per 40 x 40 pixels (2 x 2 patches)
MERGE_SIZE = 2


class Inkling2Adapter(InklingAdapter):
    """Inkling-2 checkpoints (model_type ``inkling2``, ``thinkingmachines/Inkling-2-Small-MXFP8``).

    As Inkling: the placeholder ``<|unused_200054|>`` expands to one token per 40 x 40 pixels
    (the image not resized, padded to whole tiles), nothing around it; the decoder's relative
    logits, windows and convolutions let a reused prefix see what one pass sees. Its state ``i``
    is what layer ``i`` reads as its hidden states; the attention residuals' block states are
    mixes of these.

    Eager attention only: the model class refuses SDPA (its attention adds relative position
    logits and per-head sinks, which it computes in transformers' eager function).

    The tiny tokenizer holds the processor's image token (and Inkling's end-of-text stand-in);
    the tiny decoder is Inkling's, all its layers mixture-of-experts (Inkling-2 has no dense
    ones), with attention-residual blocks of 2 layers (the real ones 6). The tower takes the
    real processor's tiles: 20-pixel patches merged 2 x 2. No tiny keys of its own
    (``vision_layers`` as in TINY_DEFAULTS).
    """

    family = "inkling2"
    model_types = ()
    special_tokens = SpecialTokens(eos="<|endoftext|>", pad="<|endoftext|>", extra=(IMAGE_TOKEN,))
    tiny_defaults = {}

    @classmethod
    def attn_implementation(cls, configured: str) -> str:
        # the model class has no SDPA path; eager computes the same
        return "eager" if configured == "sdpa" else configured

    @classmethod
    def tiny_text_config(cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        text = super().tiny_text_config(tokenizer, spec)
        del text["intermediate_size"]  # Inkling-2's name for moe_intermediate_size
        return {**text, "unpadded_vocab_size": len(tokenizer), "n_layers_per_attn_res_block": 2}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Inkling2ForConditionalGeneration, Inkling2Processor]:
        # the real image processor: 40 x 40 pixel tiles, one per image token
        processor = Inkling2Processor(image_processor=Inkling2ImageProcessor(), tokenizer=tokenizer)
        config = Inkling2Config(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config={
                "hidden_size": spec["vision_hidden_size"],
                "num_hidden_layers": spec["vision_layers"],
                "num_attention_heads": spec["vision_attention_heads"],
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
                "posemb_grid_size": 4,
                "projection_hidden_dim": 2 * spec["hidden_size"],
                "text_hidden_size": spec["hidden_size"],
            },
            image_token_id=processor.image_token_id,
        )
        return Inkling2ForConditionalGeneration(config), processor
