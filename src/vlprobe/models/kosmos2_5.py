"""Kosmos-2.5: a Pix2Struct-style encoder over variable-resolution patches, a resampler to a
fixed number of latent queries and Kosmos-2's decoder (absolute sinusoidal positions), causal
over the image block at the start of every text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from tokenizers import processors
from transformers import (
    BatchFeature,
    Kosmos2_5Config,
    Kosmos2_5ForConditionalGeneration,
    Kosmos2_5ImageProcessor,
    Kosmos2_5Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import padded_on
from vlprobe.models.kosmos2 import Kosmos2Adapter, variance_preserving_linears
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16  # the image processor's patches (16 x 16 x 3 values each)
TINY_LATENT_QUERIES = 16  # the real checkpoints have 2048
TINY_PATCHES = 256  # the real checkpoints have 4096


class Kosmos2_5Adapter(Kosmos2Adapter):
    """Kosmos-2.5 checkpoints (model_type ``kosmos-2.5``, ``microsoft/kosmos-2.5``).

    As in Kosmos-2 the processor writes the image block itself, after BOS: ``<image>``, the
    latent queries' positions (``<s>`` tokens, marked 1 in ``image_embeds_position_mask``;
    the tags are marked -1) and ``</image>``. Its mask assumes the block at the same offset in
    every row, so texts are padded on the right by the processor and moved for left padding.

    The image processor's patch budget (``max_patches``, 4096 in the real checkpoints) is
    passed to the processor, whose class default would override it. No tiny keys of its own:
    the tiny model's budget is 256 patches, and the resampler gives 16 image tokens.
    """

    family = "kosmos2_5"
    model_types = ("kosmos-2.5",)
    pixel_input = "flattened_patches"
    image_start_attribute = "image_start_token"
    checkpoint_name = "Kosmos-2.5"
    special_tokens = SpecialTokens(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        named={"boi_token": "<image>", "eoi_token": "</image>", "image_token": "<s>"},
    )

    def image_token_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # 1 marks the features' positions, -1 the <image> and </image> around them
        return inputs["image_embeds_position_mask"] == 1

    def image_bound_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # the whole block, tags included
        return inputs["image_embeds_position_mask"] != 0

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        kwargs.pop("return_text_replacement_offsets", None)  # the processor reports none
        batch = self.processor(
            images=list(images),
            text=list(texts),
            padding_side="right",
            # the checkpoint's own patch budget, which the processor class's default overrides
            max_patches=self.processor.image_processor.max_patches,
            **kwargs,
        )
        if padding_side == "left":
            batch = padded_on(batch, "left")
        return batch

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Kosmos2_5ForConditionalGeneration, Kosmos2_5Processor]:
        # the processor writes BOS before the image block: the tokenizer adds none
        tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        processor = Kosmos2_5Processor(
            Kosmos2_5ImageProcessor(max_patches=TINY_PATCHES),
            tokenizer,
            num_image_tokens=TINY_LATENT_QUERIES,
        )
        vision = spec["vision_hidden_size"]
        config = Kosmos2_5Config(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config={
                "hidden_size": vision,
                "patch_embed_hidden_size": PATCH_SIZE * PATCH_SIZE * 3,
                "intermediate_size": 2 * vision,
                "head_dim": vision // spec["vision_attention_heads"],
                "num_hidden_layers": spec["vision_layers"],
                "num_attention_heads": spec["vision_attention_heads"],
                "max_num_patches": TINY_PATCHES,
            },
            latent_query_num=TINY_LATENT_QUERIES,
        )
        model = Kosmos2_5ForConditionalGeneration(config)
        variance_preserving_linears(model.image_to_text_projection)
        return model, processor
