"""Ovis2: an AIMv2-style ViT over the image's tiles and a thumbnail whose head gives each 2 x 2
patch group a probability distribution over a visual vocabulary; an image token's embedding is
that distribution times a visual embedding table ("probabilistic tokens"). Qwen2 decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Ovis2Config,
    Ovis2ForConditionalGeneration,
    Ovis2ImageProcessor,
    Ovis2Processor,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.aya_vision import MAX_TILES
from vlprobe.models.base import (
    LoadedVLM,
    NoImageTokenError,
    text_config_kwargs,
    vision_config_kwargs,
)
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8  # the real encoder's are 14 pixels, over 448-pixel tiles
HIDDEN_STRIDE = 2  # 2 x 2 patches per image token, as in the real model
IMAGE_ATOM = "<IMG_ATOM>"  # the tokens that hold the image features
# the tokens around and between the tiles' atoms, in the order of visual_indicator_token_ids;
# each is embedded as one row of the visual embedding table
VISUAL_INDICATORS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")


class Ovis2Adapter(LoadedVLM):
    """Ovis2 checkpoints converted to transformers (model_type ``ovis2``,
    ``thisisiron/Ovis2-*-hf``): Qwen2.5's chat tokens plus the image tokens.

    The placeholder ``<image>`` is text that the processor replaces, not a token of the
    checkpoints' vocabulary: with ``<IMG_START>``, the thumbnail's ``<IMG_ATOM>`` tokens (they
    hold the features), ``<IMG_GRID>``, each tile's atoms separated by ``<IMG_COL>`` and
    ``<IMG_ROW>``, and ``<IMG_END>``. The checkpoints' chat template writes it with a newline.

    Tiny key: ``image_size`` (64), the tile resolution: ``(image_size / 16) ** 2`` tokens per tile.
    """

    family = "ovis2"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", IMAGE_ATOM, *VISUAL_INDICATORS),
    )
    tiny_defaults = {"image_size": 64}
    tiny_chat_template = "ovis2.jinja"
    image_token_suffix = "\n"

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        if IMAGE_ATOM not in processor.tokenizer.get_vocab():
            raise NoImageTokenError(
                f"model {name!r}: the tokenizer of its processor has no {IMAGE_ATOM} token; is it "
                "an Ovis2 checkpoint?"
            )
        return processor.image_token

    @property
    def image_token_ids(self) -> list[int]:
        # the processor names "<image>", which the tokenizer does not know
        return [self.image_token_id, *self.model.config.visual_indicator_token_ids]

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Ovis2ForConditionalGeneration, Ovis2Processor]:
        size = spec["image_size"]
        processor = Ovis2Processor(
            image_processor=Ovis2ImageProcessor(
                size={"height": size, "width": size}, crop_to_patches=True, max_patches=MAX_TILES
            ),
            tokenizer=tokenizer,
            image_seq_length=(size // PATCH_SIZE // HIDDEN_STRIDE) ** 2,
        )
        text = text_config_kwargs(tokenizer, spec)
        config = Ovis2Config(
            text_config={"model_type": "qwen2", **text},
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
                "hidden_stride": HIDDEN_STRIDE,
                "vocab_size": 64,  # the visual vocabulary (the real one: 16384 or more)
            },
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_ATOM),
            visual_indicator_token_ids=tokenizer.convert_tokens_to_ids(list(VISUAL_INDICATORS)),
            hidden_size=text["hidden_size"],
            vocab_size=text["vocab_size"],
        )
        return Ovis2ForConditionalGeneration(config), processor
