"""Janus and Janus-Pro (DeepSeek): one Llama decoder for understanding and generation. Images are
understood through a SigLIP encoder and an MLP aligner (their features replace the image
placeholder tokens); a VQ-VAE and its heads serve image generation only, which vlprobe never
runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16  # the real SigLIP's patches (384 pixels: 576 image tokens)


class JanusAdapter(LoadedVLM):
    """Janus checkpoints in transformers' format (model_type ``janus``,
    ``deepseek-community/Janus-Pro-1B``). The placeholder ``<image_placeholder>`` expands to
    ``<begin_of_image>``, a fixed number of ``<image_placeholder>`` (one per SigLIP patch of the
    padded square image) and ``<end_of_image>``. Only the understanding path runs: the processor's
    default ``generation_mode`` "text". Nothing else differs from the generic adapter.

    Tiny key: ``image_size`` (32): ``(image_size / 16) ** 2`` image tokens.
    """

    family = "janus"
    special_tokens = SpecialTokens(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜▁pad▁｜>",
        named={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    tiny_defaults = {"image_size": 32}
    tiny_chat_template = "janus.jinja"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[JanusForConditionalGeneration, JanusProcessor]:
        size = spec["image_size"]
        image_tokens = (size // PATCH_SIZE) ** 2
        processor = JanusProcessor(
            image_processor=JanusImageProcessor(size={"height": size, "width": size}),
            tokenizer=tokenizer,
            num_image_tokens=image_tokens,
        )
        hidden = spec["hidden_size"]
        config = JanusConfig(
            text_config={"model_type": "llama", **text_config_kwargs(tokenizer, spec)},
            vision_config={
                # its MLP width is mlp_ratio * hidden_size, not intermediate_size
                **{k: v for k, v in vision_config_kwargs(spec).items() if k != "intermediate_size"},
                "mlp_ratio": 2,
                "image_size": size,
                "patch_size": PATCH_SIZE,
                "projection_dim": hidden,  # the aligner's output feeds the decoder
                "num_image_tokens": image_tokens,
            },
            # the generation path (unused here), as small as it builds
            vq_config={
                "embed_dim": 4,
                "num_embeddings": 16,
                "latent_channels": 4,
                "base_channels": 32,  # GroupNorm needs 32 channels
                "channel_multiplier": [1, 1],
                "num_res_blocks": 1,
                "projection_dim": hidden,
                "image_token_embed_dim": hidden,
            },
            image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"),
        )
        return JanusForConditionalGeneration(config), processor
