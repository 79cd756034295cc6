"""ShieldGemma 2: a Gemma-3 image-text model (4B) tuned to answer whether an image violates a
policy, packaged as an image classifier around the Gemma-3 model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    BatchFeature,
    PreTrainedModel,
    ProcessorMixin,
    ShieldGemma2Config,
    ShieldGemma2ForImageClassification,
    ShieldGemma2Processor,
)

from vlprobe.models.gemma3 import Gemma3Adapter


class ShieldGemma2Adapter(Gemma3Adapter):
    """ShieldGemma 2 checkpoints (model_type ``shieldgemma2``, ``google/shieldgemma-2-4b-it``):
    the Gemma-3 model inside the classifier, probed as Gemma-3 (special tokens, placeholder,
    image-block attention and prefix reuse as for ``gemma3``); tiny keys as for ``gemma3``.

    The classifier's own head only reads the last position's yes/no logits; its hidden states
    are the Gemma-3 decoder's, so nothing of the policy classification is probed but the prompt.
    """

    config_class = ShieldGemma2Config
    model_class = ShieldGemma2ForImageClassification
    processor_class = ShieldGemma2Processor

    family = "shieldgemma2"
    # through AutoModelForImageTextToText, transformers 5.23 builds a Gemma3ForConditionalGeneration
    # that loads none of the checkpoint's language-model weights (their names carry the
    # classifier's prefix) and leaves them random; the classifier loads them all
    auto_model_class = AutoModelForImageClassification
    # the checkpoints' template writes the policy prompt, not available offline
    tiny_chat_template = None

    @classmethod
    def prepare(
        cls,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        hf_id: str,
        source: Mapping[str, Any],
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        # the Gemma-3 model inside: its forward returns hidden states and logits, the
        # classifier's only the yes/no logits
        return model.model, processor

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        # ShieldGemma2Processor.__call__ ignores the text and writes one policy prompt per
        # policy; the expansion it shares with Gemma3Processor takes the texts as they are
        batch = ProcessorMixin.__call__(
            self.processor,
            images=[[image] for image in images],
            text=list(texts),
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **self.processor_kwargs,
            **kwargs,
        )
        # the name Gemma-3's model reads (as Gemma3Processor renames it)
        batch["token_type_ids"] = batch.pop("mm_token_type_ids")
        return batch
