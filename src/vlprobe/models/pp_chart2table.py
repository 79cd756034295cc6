"""PP-Chart2Table: GOT-OCR 2.0's architecture (transformers loads it as
GotOcr2ForConditionalGeneration), trained by PaddlePaddle to turn charts into tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from transformers import (
    BatchFeature,
    GotOcr2ForConditionalGeneration,
    PPChart2TableConfig,
    PPChart2TableImageProcessor,
    PPChart2TableProcessor,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vlprobe.models.base import NoImageTokenError
from vlprobe.models.got_ocr2 import TINY_IMAGE_SIZE, GotOcr2Adapter

IMAGE_TOKEN = "<imgpad>"


class PPChart2TableAdapter(GotOcr2Adapter):
    """PP-Chart2Table checkpoints (model_type ``pp_chart2table``,
    ``PaddlePaddle/PP-Chart2Table_safetensors``).

    GOT-OCR 2.0's layout and image block, but its processor expands nothing: the text itself
    holds ``<img>``, the config's ``image_seq_length`` (256) ``<imgpad>`` and ``</img>``, as
    the checkpoint's chat template writes them (with its own fixed "Chart to table"
    instruction, transformers' documentation says; vlprobe's raw format puts its prompts after
    the same block).

    No tiny keys of its own (those of got_ocr2).
    """

    family = "pp_chart2table"
    config_class = PPChart2TableConfig

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        # the processor names no image token; the model's features go at <imgpad>
        if IMAGE_TOKEN not in processor.tokenizer.get_vocab():
            raise NoImageTokenError(
                f"model {name!r}: the tokenizer of its {type(processor).__name__} has no "
                f"{IMAGE_TOKEN} token; is it a PP-Chart2Table checkpoint?"
            )
        return IMAGE_TOKEN

    @property
    def image_tokens_in_text(self) -> int:
        # the processor does not expand the placeholder: the text holds every <imgpad>
        return self.model.config.image_seq_length

    def prompt_token_ids(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[str]]
    ) -> tuple[BatchFeature, list[list[list[int]]]]:
        # the processor expands nothing (it reports no replacements): a prompt's token ids are
        # its text's
        processed = self.process(
            images, [self.prompt(texts[0]) for texts in prompts], "left", **self.text_kwargs
        )
        ids = [
            self.tokenizer([self.prompt(text) for text in texts], **self.text_kwargs)["input_ids"]
            for texts in prompts
        ]
        return processed, ids

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[GotOcr2ForConditionalGeneration, PPChart2TableProcessor]:
        size = TINY_IMAGE_SIZE
        processor = PPChart2TableProcessor(
            image_processor=PPChart2TableImageProcessor(size={"height": size, "width": size}),
            tokenizer=tokenizer,
        )
        config = cls.tiny_config(tokenizer, spec, IMAGE_TOKEN)
        return GotOcr2ForConditionalGeneration(config), processor
