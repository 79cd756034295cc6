"""Gemma-3: a SigLIP vision encoder, average-pooled to a fixed number of soft tokens, and a Gemma-3
decoder whose attention is bidirectional within an image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SiglipVisionConfig,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8


class Gemma3Adapter(LoadedVLM):
    """Gemma-3 image-text checkpoints (model_type ``gemma3``).

    Tiny keys: ``image_size`` (64), the encoder resolution, and ``image_tokens`` (16), the
    soft tokens per image (a square number dividing ``(image_size / 8) ** 2``).

    Prefix reuse is valid: image tokens attend to each other bidirectionally (through the
    processor's ``token_type_ids``), but never to text after the image, and the whole image
    block is always in the prefix. The prefix pass gets the prefix's ``token_type_ids``; suffix
    passes, text only, get none, which leaves their attention causal as in the full pass.
    """

    # the real classes; ShieldGemma 2 swaps them
    config_class: ClassVar[type] = Gemma3Config
    model_class: ClassVar[type] = Gemma3ForConditionalGeneration
    processor_class: ClassVar[type] = Gemma3Processor

    family = "gemma3"
    special_tokens = SpecialTokens(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        named={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tiny_defaults = {"image_size": 64, "image_tokens": 16}
    tiny_chat_template = "gemma3.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        image_size = spec["image_size"]
        processor = cls.processor_class(
            image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
            tokenizer=tokenizer,
            image_seq_length=spec["image_tokens"],
        )
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        config = cls.config_class(
            vision_config=SiglipVisionConfig(
                **vision_config_kwargs(spec),
                image_size=image_size,
                patch_size=PATCH_SIZE,
                vision_use_head=False,
            ),
            text_config=Gemma3TextConfig(
                **text_config_kwargs(tokenizer, spec),
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
            ),
            mm_tokens_per_image=spec["image_tokens"],
            boi_token_index=tokenizer.boi_token_id,
            eoi_token_index=tokenizer.eoi_token_id,
            image_token_index=tokenizer.image_token_id,
        )
        model = cls.model_class(config)
        # transformers initialises the image projection to zero (it is trained from scratch);
        # a tiny model needs images to matter, so draw it like every other weight
        projector = next(m for n, m in model.named_modules() if n.endswith("multi_modal_projector"))
        nn.init.normal_(projector.mm_input_projection_weight, std=config.initializer_range)
        return model, processor
