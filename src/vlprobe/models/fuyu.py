"""Fuyu: no vision tower; each image patch is projected linearly into a token of a Persimmon
decoder, the image's rows ended by a newline token."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from tokenizers import Tokenizer
from transformers import (
    BatchFeature,
    FuyuConfig,
    FuyuForCausalLM,
    FuyuImageProcessor,
    FuyuProcessor,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from vlprobe.models.base import LoadedVLM, padded_on
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 10  # the real checkpoints' patches are 30 x 30 pixels
IMAGE_TOKENS = ("|SPEAKER|", "|NEWLINE|")  # a patch's token, a row's end
# GPT-2's pre-tokenizing split, with the image tokens whole and the space before them alone
TINY_SPLIT = r"\|SPEAKER\||\|NEWLINE\||\s(?=\|)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def fuyu_like_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tiny byte-level tokenizer made to tokenize as Fuyu's does where its processor relies
    on it: a space is put before every text, and the image tokens are ordinary vocabulary (not
    added tokens), so an image block tokenised alone starts with that space's token, which the
    processor strips."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for token in IMAGE_TOKENS:
        vocab[token] = max(vocab.values()) + 1
    spec["model"]["ignore_merges"] = True  # a word in the vocabulary is one token
    spec["normalizer"] = {"type": "Prepend", "prepend": " "}
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": TINY_SPLIT},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        extra_special_tokens=list(FuyuAdapter.special_tokens.extra),
    )


class FuyuAdapter(LoadedVLM):
    """Fuyu checkpoints (model_type ``fuyu``, ``adept/fuyu-8b``).

    There is no placeholder in the text: the processor puts the image first, one
    ``|SPEAKER|`` per patch (they hold the projected patches) and a ``|NEWLINE|`` after each
    row, then BOS, the prompt and the beginning-of-answer token ``<0x04>`` (the prompt ends
    there). The processor always pads on the left; right padding moves the tokens after it.
    The checkpoints have no chat template (raw format only).

    Tiny key: ``image_size`` (60): images are scaled to fit it, in 10-pixel patches.
    """

    family = "fuyu"
    special_tokens = SpecialTokens(
        bos="<s>", eos="|ENDOFTEXT|", pad="<pad>", unk="<unk>", extra=("<0x04>",)
    )
    tiny_defaults = {"image_size": 60}

    def prompt(self, text: str) -> str:
        return text  # the processor writes the image's tokens before it

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        # one image per text, a flat list; pixel_values rather than the deprecated patches
        batch = self.processor(
            images=list(images), text=list(texts), return_legacy_image_output=False, **kwargs
        )
        if padding_side == "right":
            batch = padded_on(batch, "right")
        return batch

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[FuyuForCausalLM, FuyuProcessor]:
        size = spec["image_size"]
        tokenizer = fuyu_like_tokenizer(tokenizer)
        processor = FuyuProcessor(
            FuyuImageProcessor(
                size={"height": size, "width": size},
                patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE},
            ),
            tokenizer,
        )
        config = FuyuConfig(
            text_config={
                "model_type": "persimmon",
                "vocab_size": len(tokenizer),
                "hidden_size": spec["hidden_size"],
                "intermediate_size": spec["intermediate_size"],
                "num_hidden_layers": spec["num_layers"],
                "num_attention_heads": spec["num_attention_heads"],
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vocab_size=len(tokenizer),
            hidden_size=spec["hidden_size"],
            patch_size=PATCH_SIZE,
            image_size=size,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[0]),
            pad_token_id=tokenizer.pad_token_id,
        )
        return FuyuForCausalLM(config), processor
