"""Qianfan-OCR: InternVL's layout (an InternViT-style encoder over the image's tiles, a
pixel-shuffle MLP projector) with a Qwen3 decoder."""

from __future__ import annotations

from transformers import (
    GotOcr2ImageProcessor,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    QianfanOCRConfig,
    QianfanOCRForConditionalGeneration,
    QianfanOCRProcessor,
    QianfanOCRVisionConfig,
    Qwen3Config,
)

from vlprobe.models.base import NoImageTokenError
from vlprobe.models.internvl import InternVLAdapter
from vlprobe.models.tiny import SpecialTokens


class QianfanOCRAdapter(InternVLAdapter):
    """Qianfan-OCR checkpoints (model_type ``qianfan_ocr``, ``baidu/Qianfan-OCR``).

    The text's placeholder is ``<image>``; the processor replaces it by ``<img>``, the tiles'
    ``<IMG_CONTEXT>`` tokens and ``</img>``, as InternVL's does.

    Tiny key: ``image_size`` (56), as for InternVL.
    """

    family = "qianfan_ocr"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<image>"),
        named={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
        },
    )
    # the checkpoint's template is not available offline: tiny models run in raw format only
    tiny_chat_template = None
    image_token_suffix = "\n"  # the image on its own line, as for InternVL
    config_class = QianfanOCRConfig
    vision_config_class = QianfanOCRVisionConfig
    text_config_class = Qwen3Config
    model_class = QianfanOCRForConditionalGeneration

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        # the text's placeholder is not the features' token (processor.image_token)
        token = getattr(processor, "image_placeholder_token", None)
        if token is None or token not in processor.tokenizer.get_vocab():
            raise NoImageTokenError(
                f"model {name!r}: the tokenizer of its processor has no image placeholder "
                f"token ({token!r}); is it a Qianfan-OCR checkpoint?"
            )
        return token

    @classmethod
    def tiny_processor(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: GotOcr2ImageProcessor,
        tokens_per_tile: int,
    ) -> ProcessorMixin:
        # no video processor: Qianfan-OCR reads images only
        return QianfanOCRProcessor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_tile
        )
