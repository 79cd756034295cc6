"""Idefics2: a SigLIP encoder at the image's aspect ratio, a perceiver resampler to 64 latents
and a Mistral decoder; the image's tokens sit between <fake_token_around_image> tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessor,
    Idefics2Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8
LATENTS = 16  # the resampler's latent queries: image tokens per image (the real model has 64)


class Idefics2Adapter(LoadedVLM):
    """Idefics2 checkpoints (model_type ``idefics2``, ``HuggingFaceM4/idefics2-8b``). Nothing
    differs from the generic adapter.

    Tiny key: ``image_size`` (64), the encoder's longest edge; the tiny processor does not
    split images, so an image gives 16 tokens (the resampler's latents).
    """

    family = "idefics2"
    special_tokens = SpecialTokens(
        bos="<s>",
        eos="<end_of_utterance>",
        pad="<unk>",
        unk="<unk>",
        extra=("</s>", "<fake_token_around_image>", "<image>"),
    )
    tiny_defaults = {"image_size": 64}
    tiny_chat_template = "idefics2.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Idefics2ForConditionalGeneration, Idefics2Processor]:
        size = spec["image_size"]
        processor = Idefics2Processor(
            image_processor=Idefics2ImageProcessor(
                do_image_splitting=False,
                size={"shortest_edge": size // 2, "longest_edge": size},
            ),
            tokenizer=tokenizer,
            image_seq_len=LATENTS,
        )
        config = Idefics2Config(
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
            },
            perceiver_config={
                "hidden_size": spec["hidden_size"],
                "resampler_n_latents": LATENTS,
                "resampler_depth": 1,
                "resampler_n_heads": spec["num_attention_heads"],
                "resampler_head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "num_key_value_heads": spec["num_key_value_heads"],
            },
            text_config={"model_type": "mistral", **text_config_kwargs(tokenizer, spec)},
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
        return Idefics2ForConditionalGeneration(config), processor
