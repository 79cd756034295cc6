"""InstructBLIP: BLIP-2 whose Q-Former reads the instruction too (its own BERT tokens of the
prompt) before its queries become the decoder's image tokens; Vicuna (Llama) language model."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from transformers import (
    BatchFeature,
    BertTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlamaConfig,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import padded_on, text_config_kwargs
from vlprobe.models.blip_2 import Blip2Adapter
from vlprobe.models.tiny import TINY_CORPUS, SpecialTokens

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class InstructBlipAdapter(Blip2Adapter):
    """InstructBLIP checkpoints with a decoder-only language model (model_type
    ``instructblip``, ``Salesforce/instructblip-vicuna-7b``); the Flan-T5 ones are
    encoder-decoder and are refused before any weights load. Tokens and positions as BLIP-2's,
    with Llama's rotary positions.

    The Q-Former's BERT tokens of the prompt (``qformer_input_ids``) go with every pass; since
    they make the image tokens depend on the prompt, there is no prefix reuse.

    Tiny keys: ``image_size`` (28) and ``query_tokens`` (8), as BLIP-2's.
    """

    family = "instructblip"
    model_types = ("instructblip",)
    language_model_path = "language_model.model"
    final_norm_name = "norm"
    decoder_kind = "Vicuna"
    special_tokens = SpecialTokens(
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", extra=("<image>",)
    )
    # the Q-Former reads the prompt with the image, so the image tokens depend on the prompt:
    # no prefix is shared by an image's prompts, the plain path always
    prefix_reuse = False

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        batch = super().process(images, texts, padding_side, **kwargs)
        # the Q-Former's BERT positions are absolute from its first token: padded on the right
        return padded_on(batch, "right", "qformer_attention_mask", ["qformer_input_ids"])

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[InstructBlipForConditionalGeneration, InstructBlipProcessor]:
        qformer_tokenizer = tiny_bert_tokenizer()
        processor = InstructBlipProcessor(
            cls.tiny_image_processor(spec),
            tokenizer,
            qformer_tokenizer,
            num_query_tokens=spec["query_tokens"],
        )
        vision_and_qformer = cls.tiny_config_kwargs(tokenizer, spec)
        vision_and_qformer["qformer_config"]["vocab_size"] = len(qformer_tokenizer)
        config = InstructBlipConfig(
            text_config=LlamaConfig(**text_config_kwargs(tokenizer, spec)), **vision_and_qformer
        )
        return InstructBlipForConditionalGeneration(config), processor


def tiny_bert_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer (the Q-Former's, bert-base-uncased in the real checkpoints) over
    the words and characters of the tiny corpus."""
    words = sorted({w for text in TINY_CORPUS for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    chars = sorted({c for w in words for c in w})
    pieces = [*chars, *(f"##{c}" for c in chars), *words]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*BERT_SPECIAL_TOKENS, *pieces]))}
    return BertTokenizer(vocab=vocab)
