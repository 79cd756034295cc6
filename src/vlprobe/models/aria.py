"""Aria: an Idefics3-style SigLIP encoder at the image's own aspect ratio (padded to a square,
with a patch mask), a cross-attention projector from a fixed set of learned queries, and a
mixture-of-experts decoder (routed experts plus shared ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import (
    AriaConfig,
    AriaForConditionalGeneration,
    AriaImageProcessor,
    AriaProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

# the processor resizes every image to 980 pixels whatever its image processor says (its own
# default wins); a tiny encoder sees them in 7 x 7 coarse patches (the real one: 14 pixels)
IMAGE_SIZE = 980
PATCH_SIZE = 140


class AriaAdapter(LoadedVLM):
    """Aria checkpoints in transformers' format (model_type ``aria``, ``rhymes-ai/Aria``).

    The placeholder ``<|img|>`` expands to one ``<|img|>`` per projector query (128 at 490
    pixels in the real model, 256 at the 980 that its processor uses); the chat template writes
    it between ``<fim_prefix>`` and ``<fim_suffix>``. Nothing differs from the generic adapter.

    Tiny key: ``image_tokens`` (8), the projector's queries.
    """

    family = "aria"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<pad>",
        unk="<unk>",
        extra=("<|im_start|>", "<fim_prefix>", "<fim_suffix>"),
        named={"image_token": "<|img|>"},
    )
    tiny_defaults = {"image_tokens": 8}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[AriaForConditionalGeneration, AriaProcessor]:
        queries = spec["image_tokens"]
        processor = AriaProcessor(
            image_processor=AriaImageProcessor(max_image_size=IMAGE_SIZE),
            tokenizer=tokenizer,
            size_conversion={IMAGE_SIZE: queries},
        )
        config = AriaConfig(
            vision_config={
                "model_type": "idefics3_vision",
                **vision_config_kwargs(spec),
                "image_size": IMAGE_SIZE,
                "patch_size": PATCH_SIZE,
            },
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "moe_num_experts": 4,
                "moe_topk": 2,
                "moe_num_shared_experts": 1,
            },
            projector_patch_to_query_dict={(IMAGE_SIZE // PATCH_SIZE) ** 2: queries},
            image_token_index=tokenizer.image_token_id,
        )
        model = AriaForConditionalGeneration(config)
        # transformers initialises the projector's queries to zero (they are trained from
        # scratch), which makes every query alike; a tiny model needs them apart
        nn.init.normal_(model.model.multi_modal_projector.query, std=config.initializer_range)
        return model, processor
