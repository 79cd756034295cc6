"""PaliGemma (1 and 2): a SigLIP encoder, a linear projection and a Gemma decoder that attends
bidirectionally over the image and the prompt (a prefix-LM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerBase,
    SiglipImageProcessor,
)

from vlprobe.models.base import LoadedVLM, siglip_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8


class PaliGemmaAdapter(LoadedVLM):
    """PaliGemma checkpoints (model_type ``paligemma``, ``google/paligemma2-*``). The processor
    writes the image tokens, BOS, the prompt and a newline (the prompt ends there).

    Tiny key: ``image_size`` (32): ``(image_size / 8) ** 2`` image tokens.
    """

    family = "paligemma"
    special_tokens = SpecialTokens(
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", named={"image_token": "<image>"}
    )
    tiny_defaults = {"image_size": 32}
    # a prefix-LM: image and prompt form one bidirectional block (token_type_ids), so the image's
    # hidden states depend on the prompt and no prefix can be reused: the plain path always
    prefix_reuse = False

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
        size = spec["image_size"]
        image_processor = SiglipImageProcessor(size={"height": size, "width": size})
        image_processor.image_seq_length = (size // PATCH_SIZE) ** 2
        # the processor adds PaliGemma's location and segmentation tokens to the tokenizer
        processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        config = PaliGemmaConfig(
            vision_config={
                **siglip_config(spec, size, PATCH_SIZE),
                "projection_dim": spec["hidden_size"],
            },
            text_config={
                "model_type": "gemma",
                **text_config_kwargs(tokenizer, spec),
                "head_dim": head_dim,
            },
            image_token_index=tokenizer.image_token_id,
            projection_dim=spec["hidden_size"],
            hidden_size=spec["hidden_size"],
            vocab_size=len(tokenizer),
        )
        return PaliGemmaForConditionalGeneration(config), processor
