"""BLIP-2: a ViT (EVA-CLIP), a Q-Former whose learned queries read the image, and a decoder-only
OPT language model that reads the projected queries as tokens at the start of its sequence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import (
    BatchFeature,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    DynamicCache,
    OPTConfig,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import ModelOutput

from vlprobe.models.base import (
    LoadedVLM,
    ModelError,
    NoImageTokenError,
    padded_on,
    text_config_kwargs,
    vision_config_kwargs,
)
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14


class Blip2Adapter(LoadedVLM):
    """BLIP-2 checkpoints with a decoder-only language model (model_type ``blip-2``,
    ``Salesforce/blip2-opt-2.7b``). Those with Flan-T5 are encoder-decoder and are refused before
    any weights load.

    There is no placeholder in the text: the processor tokenises the text (BOS, the prompt) and
    puts ``num_query_tokens`` image tokens before it, after padding, so its padding is moved to
    the padding side here. OPT's positions are absolute, counted over non-padding tokens, so a
    suffix continues from its own prefix's length; suffix passes (no image) run the language
    model alone, since the full model insists on pixels.

    Tiny keys: ``image_size`` (28), the ViT resolution; ``query_tokens`` (8), the Q-Former's
    queries, i.e. the image tokens (the real checkpoints have 32).
    """

    family = "blip_2"
    model_types = ("blip-2",)
    language_model_path = "language_model.model.decoder"
    final_norm_name = "final_layer_norm"
    # OPT's tokenizer: </s> opens every text; the image token added by the conversion
    special_tokens = SpecialTokens(
        bos="</s>", eos="</s>", pad="<pad>", unk="</s>", extra=("<image>",)
    )
    tiny_defaults = {"image_size": 28, "query_tokens": 8}
    # the causal LM that the checkpoint's language model must be (not Flan-T5's seq2seq)
    decoder_kind = "OPT"

    @classmethod
    def check_checkpoint(cls, name: str, hf_id: str, checkpoint: Mapping[str, Any]) -> None:
        # Flan-T5 variants: the queries go into T5's encoder; no decoder layer holds image tokens
        text_type = checkpoint.get("text_config", {}).get("model_type")
        if text_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelError(
                f"model {name!r}: {hf_id} is a {checkpoint.get('model_type')} checkpoint with the "
                f"encoder-decoder language model {text_type!r}: its image goes through the "
                "encoder and the decoder reads it through cross-attention, so vlprobe cannot "
                f"probe it; use a decoder-only ({cls.decoder_kind}) checkpoint"
            )

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        # the processor keeps its image token as an AddedToken
        token = str(getattr(processor, "image_token", None))
        if token not in processor.tokenizer.get_vocab():
            raise NoImageTokenError(
                f"model {name!r}: its processor {type(processor).__name__} has no image token "
                f"in its tokenizer (image_token={token!r}); is it a BLIP-2 checkpoint?"
            )
        return token

    def prompt(self, text: str) -> str:
        return text  # the processor writes the image tokens itself, before the text

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        kwargs.pop("return_text_replacement_offsets", None)  # no placeholder is expanded
        batch = self.processor(
            images=list(images),
            text=list(texts),
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **kwargs,
        )
        # the image tokens come before the text's padding: move the padding to its side
        return padded_on(batch, padding_side)

    def prompt_token_ids(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[str]]
    ) -> tuple[BatchFeature, list[list[list[int]]]]:
        # the image tokens are the same for every image: each prompt is processed with its image
        processed = self.process(images, [texts[0] for texts in prompts], "left")
        return processed, [
            self.processed_ids([image] * len(texts), list(texts))
            for image, texts in zip(images, prompts, strict=True)
        ]

    def prefix_positions(self, inputs: BatchFeature) -> tuple[None, torch.Tensor]:
        # OPT numbers non-padding tokens 0, 1, 2, ...: the prefix pass does so itself
        return None, inputs["attention_mask"].sum(dim=1)

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        # the language model's output holds the hidden states
        return super().forward(inputs, **kwargs).language_model_outputs

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        if "pixel_values" not in inputs:  # a suffix: the language model alone
            return self.model.language_model(
                **inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs
            )
        return super().forward_cached(inputs, cache, **kwargs).language_model_outputs

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
        processor = Blip2Processor(
            cls.tiny_image_processor(spec), tokenizer, num_query_tokens=spec["query_tokens"]
        )
        text = text_config_kwargs(tokenizer, spec)
        config = Blip2Config(
            text_config=OPTConfig(
                vocab_size=text["vocab_size"],
                hidden_size=spec["hidden_size"],
                word_embed_proj_dim=spec["hidden_size"],
                ffn_dim=spec["intermediate_size"],
                num_hidden_layers=spec["num_layers"],
                num_attention_heads=spec["num_attention_heads"],
                bos_token_id=text["bos_token_id"],
                eos_token_id=text["eos_token_id"],
                pad_token_id=text["pad_token_id"],
            ),
            **cls.tiny_config_kwargs(tokenizer, spec),
        )
        return Blip2ForConditionalGeneration(config), processor

    @staticmethod
    def tiny_image_processor(spec: Mapping[str, Any]) -> BlipImageProcessor:
        size = spec["image_size"]
        return BlipImageProcessor(size={"height": size, "width": size})

    @staticmethod
    def tiny_config_kwargs(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
        """The ViT and Q-Former of a tiny BLIP-2 (and InstructBLIP) model."""
        vision = vision_config_kwargs(spec)
        return {
            "vision_config": {
                **vision,
                "image_size": spec["image_size"],
                "patch_size": PATCH_SIZE,
                # the ViT's default draws weights of std 1e-10 (its checkpoints are trained);
                # a tiny model needs its images to matter
                "initializer_range": 0.02,
            },
            "qformer_config": {
                "hidden_size": vision["hidden_size"],
                "intermediate_size": vision["intermediate_size"],
                "num_hidden_layers": vision["num_hidden_layers"],
                "num_attention_heads": vision["num_attention_heads"],
                "vocab_size": len(tokenizer),
            },
            "num_query_tokens": spec["query_tokens"],
            "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        }
