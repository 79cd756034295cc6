"""GOT-OCR 2.0: a SAM ViT encoder with a convolutional neck, two stride-2 convolutions that turn
its patch grid into 256 tokens, and a Qwen2 decoder."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from PIL import Image
from transformers import (
    BatchFeature,
    GotOcr2Config,
    GotOcr2ForConditionalGeneration,
    GotOcr2ImageProcessor,
    GotOcr2Processor,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, sam_config, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

# the processor writes 256 <imgpad> per image (a class constant, not saved with it): the SAM
# grid over 4 x 4 must be 16 x 16, so a tiny tower takes 64 x 64 one-pixel patches
IMAGE_TOKENS = 256
TINY_IMAGE_SIZE = 64
TINY_PATCH_SIZE = 1


class GotOcr2Adapter(LoadedVLM):
    """GOT-OCR 2.0 checkpoints (model_type ``got_ocr2``, ``stepfun-ai/GOT-OCR-2.0-hf``).

    The image reads ``<img><imgpad></img>`` and a newline, as in the processor's own OCR turn;
    the processor expands ``<imgpad>`` into 256 of them, which hold the features. The
    checkpoints have no chat template (raw format only).

    No tiny keys of its own: the processor's fixed 256 tokens need a 64 x 64 patch grid, so a
    tiny SAM tower reads 64-pixel images in one-pixel patches.
    """

    family = "got_ocr2"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<img>", "</img>", "<imgpad>", "<ref>", "</ref>", "<box>", "</box>"),
    )

    @classmethod
    def attn_implementation(cls, configured: str) -> str:
        # GotOcr2ForConditionalGeneration has no SDPA path (transformers refuses to load it so);
        # eager attention computes the same
        return "eager" if configured == "sdpa" else configured

    # the image block's tags around the <imgpad> tokens
    image_start: ClassVar[str] = "<img>"
    image_end: ClassVar[str] = "</img>"

    @property
    def image_tokens_in_text(self) -> int:
        """How many <imgpad> the text holds before processing: one, which the processor
        expands."""
        return 1

    @functools.cached_property
    def image_placeholder(self) -> str:
        # the image block of the processor's own prompt (it has no chat template to read it from)
        pads = self.image_token * self.image_tokens_in_text
        return f"{self.image_start}{pads}{self.image_end}\n"

    @property
    def image_token_ids(self) -> list[int]:
        # the features' <imgpad> and the <img> ... </img> around them
        tokens = [self.image_start, self.image_token, self.image_end]
        return self.tokenizer.convert_tokens_to_ids(tokens)

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        # the processor takes nested image lists only for multi-page documents: a flat list
        return self.processor(
            images=list(images),
            text=list(texts),
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **kwargs,
        )

    # the config class of the family's checkpoints
    config_class: ClassVar[type[PretrainedConfig]] = GotOcr2Config

    @classmethod
    def tiny_config(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any], image_token: str
    ) -> PretrainedConfig:
        """A tiny GOT-OCR2 config: a SAM tower of windowed attention (its real global layers
        would attend over all 4,096 patches of the grid, the tests' slowest part) whose grid
        gives :data:`IMAGE_TOKENS` tokens, and a Qwen2 decoder."""
        size = TINY_IMAGE_SIZE
        return cls.config_class(
            vision_config={
                **sam_config(spec, size, TINY_PATCH_SIZE, 8, []),
                "output_channels": spec["vision_hidden_size"],
            },
            text_config={"model_type": "qwen2", **text_config_kwargs(tokenizer, spec)},
            image_token_index=tokenizer.convert_tokens_to_ids(image_token),
            image_seq_length=IMAGE_TOKENS,
        )

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[GotOcr2ForConditionalGeneration, GotOcr2Processor]:
        size = TINY_IMAGE_SIZE
        processor = GotOcr2Processor(
            image_processor=GotOcr2ImageProcessor(size={"height": size, "width": size}),
            tokenizer=tokenizer,
        )
        config = cls.tiny_config(tokenizer, spec, processor.image_token)
        return GotOcr2ForConditionalGeneration(config), processor
