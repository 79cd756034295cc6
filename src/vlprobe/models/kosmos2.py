"""Kosmos-2: a CLIP vision encoder, a resampler to 64 latent queries and a Magneto-style decoder
with absolute sinusoidal positions, causal over the image block at the start of every text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import (
    BatchFeature,
    CLIPImageProcessor,
    DynamicCache,
    Kosmos2Config,
    Kosmos2ForConditionalGeneration,
    Kosmos2Processor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.utils import ModelOutput

from vlprobe.models.base import LoadedVLM, NoImageTokenError, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
PATCH_INDEX_TOKENS = 16  # grounding tokens the processor adds; the real one has 32 x 32
LATENT_QUERIES = 64  # image tokens per image: fixed by the processor


class Kosmos2Adapter(LoadedVLM):
    """Kosmos-2 checkpoints (model_type ``kosmos-2``, ``microsoft/kosmos-2-patch14-224``).

    Unlike the other families there is no placeholder in the text: the processor puts the
    image block (``<image>``, 64 positions for the features, ``</image>``) after the BOS token
    of every text, marks the features' positions in ``image_embeds_position_mask`` (their token
    ids are ordinary ones) and pads image prompts itself, on the tokenizer's side. Positions are
    absolute and count non-padding tokens from the padding id on, so the suffixes of a reused
    prefix continue from the prefix's own length. The full model insists on an image, so suffix
    passes run its text decoder alone.

    Tiny key: ``image_size`` (28), the CLIP resolution; an image always gives 64 tokens.
    """

    family = "kosmos2"
    model_types = ("kosmos-2",)
    language_model_path = "text_model.model"
    final_norm_name = "layer_norm"
    special_tokens = SpecialTokens(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    tiny_defaults = {"image_size": 28}

    # the processor's attribute naming the token that opens the image block, and the
    # checkpoints' name (for the error when it is missing)
    image_start_attribute: ClassVar[str] = "boi_token"
    checkpoint_name: ClassVar[str] = "Kosmos-2"

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        # the token that opens the image block; the processor writes the block itself
        boi = getattr(processor, cls.image_start_attribute, None)
        if boi is None or boi not in processor.tokenizer.get_vocab():
            raise NoImageTokenError(
                f"model {name!r}: its processor {type(processor).__name__} has no image token "
                f"in its tokenizer ({cls.image_start_attribute}={boi!r}); is it a "
                f"{cls.checkpoint_name} checkpoint?"
            )
        return boi

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> None:
        return None  # the features' positions come with the inputs, not from token ids

    def image_token_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return inputs["image_embeds_position_mask"].bool()

    def prompt(self, text: str) -> str:
        return text

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, padding_side
        try:
            return self.processor(
                images=list(images), text=list(texts), return_tensors="pt", **kwargs
            )
        finally:
            tokenizer.padding_side = side

    def prompt_token_ids(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[str]]
    ) -> tuple[BatchFeature, list[list[list[int]]]]:
        # the processor's image block is not a placeholder expansion: each prompt is processed
        # with its image (a CLIP resize per prompt, cheap beside the decoder)
        processed = self.process(images, [texts[0] for texts in prompts], "left")
        ids = [
            [self.process([image], [text], "left")["input_ids"][0].tolist() for text in texts]
            for image, texts in zip(images, prompts, strict=True)
        ]
        return processed, ids

    def prefix_positions(self, inputs: BatchFeature) -> tuple[None, torch.Tensor]:
        # the model numbers tokens padding_idx + 1, + 2, ... skipping padding: the prefix pass
        # does so itself, and the first suffix token follows the prefix's last
        padding_idx = self.model.config.text_config.pad_token_id
        return None, padding_idx + 1 + inputs["attention_mask"].sum(dim=1)

    # the processor's output that holds the image (absent from suffix passes)
    pixel_input: ClassVar[str] = "pixel_values"

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        model = self.model if self.pixel_input in inputs else self.model.text_model
        return model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)

    @staticmethod
    def tiny_text_config(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """The tiny decoder's config, in Kosmos-2's own key names (Kosmos-2.5 shares them)."""
        return {
            "vocab_size": len(tokenizer),
            "embed_dim": spec["hidden_size"],
            "ffn_dim": spec["intermediate_size"],
            "layers": spec["num_layers"],
            "attention_heads": spec["num_attention_heads"],
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Kosmos2ForConditionalGeneration, Kosmos2Processor]:
        size = spec["image_size"]
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        # the processor adds its tag and grounding tokens to the tokenizer: build it first
        processor = Kosmos2Processor(
            image_processor, tokenizer, num_patch_index_tokens=PATCH_INDEX_TOKENS
        )
        config = Kosmos2Config(
            text_config=cls.tiny_text_config(tokenizer, spec),
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
            },
            latent_query_num=LATENT_QUERIES,
        )
        model = Kosmos2ForConditionalGeneration(config)
        variance_preserving_linears(model.image_to_text_projection)
        return model, processor


def variance_preserving_linears(module: nn.Module) -> None:
    """Draw a tiny model's resampler anew: its latent queries attend almost uniformly with
    weights of std 0.02, averaging the image away; a tiny model needs images to matter, so its
    linear layers are drawn variance-preserving."""
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
