"""Chameleon: early fusion. A VQ-VAE turns the image into discrete codes, each an ordinary token
("IMGIMG...Z") of one decoder over text and image alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonImageProcessor,
    ChameleonProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

CODEBOOK = 64  # the VQ-VAE's codes (the real one: 8192)
DOWNSAMPLING = 8  # pixels per code along a side (the real one: 16)


def code_token(code: int) -> str:
    """The token of VQ code ``code``: its digits as the letters A-J, as Chameleon's vocabulary
    names them."""
    return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"


class ChameleonAdapter(LoadedVLM):
    """Chameleon checkpoints (model_type ``chameleon``, ``facebook/chameleon-7b``).

    The placeholder ``<image>`` expands to ``<racm3:break>``, one ``<image>`` per code and
    ``<eoss>``; the model puts the image's codes (as their tokens) in place of the ``<image>``
    tokens, so those are the image tokens. Images are resized and centre-cropped to one size,
    so batching does not change their codes.

    Tiny key: ``image_size`` (32): ``(image_size / 8) ** 2`` codes per image.
    """

    family = "chameleon"
    special_tokens = SpecialTokens(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        extra=tuple(code_token(code) for code in range(CODEBOOK)),
        named={"image_token": "<image>", "boi_token": "<racm3:break>", "eoi_token": "<eoss>"},
    )
    tiny_defaults = {"image_size": 32}
    # the prompt as a text to continue: otherwise the processor ends it with the separator
    # token that closes a chat turn, and that, not the prompt's end, is the last token
    processor_kwargs = {"return_for_text_completion": True}

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int:
        # the config has no image_token_id: its vocabulary map names the placeholder's
        return model.config.vocabulary_map["<image>"]

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[ChameleonForConditionalGeneration, ChameleonProcessor]:
        size = spec["image_size"]
        processor = ChameleonProcessor(
            image_processor=ChameleonImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            tokenizer=tokenizer,
            image_seq_length=(size // DOWNSAMPLING) ** 2,
        )
        config = ChameleonConfig(
            **text_config_kwargs(tokenizer, spec),
            vq_config={
                "embed_dim": 8,
                "num_embeddings": CODEBOOK,
                "latent_channels": 8,
                "resolution": size,
                "base_channels": 32,  # GroupNorm needs 32 channels
                "channel_multiplier": [1, 1, 1, 1],  # three halvings: DOWNSAMPLING
                "num_res_blocks": 1,
                "attn_resolutions": [],
            },
            vocabulary_map=tokenizer.get_vocab(),
        )
        return ChameleonForConditionalGeneration(config), processor
