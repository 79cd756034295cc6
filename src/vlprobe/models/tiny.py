"""Offline pieces of tiny test models: a byte-level BPE tokenizer trained on a built-in corpus.

Tiny models stand in for real checkpoints in tests and in the demo: same model classes, same
processors, random weights, and a tokenizer trained here (no hub access) that carries the
family's special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from vlprobe.data import COCO_CATEGORIES

# Words the probing prompts and COCO-like captions use, so that they tokenize into few pieces.
_PROMPT_SENTENCES = [
    'This image describes "a dog on a couch". Is it right? Answer: Yes',
    "This image contains: two people riding bicycles.\nIs this right? No",
    "This image contains the following types of objects: person, car, dog",
    "A man is standing next to a red bus in the street.",
    "A woman holding an umbrella while walking in the rain.",
    "Two cats sleeping on a bed near the window.",
    "A group of people sitting at a dining table with food.",
    "A plate with a sandwich, an apple and a cup of coffee.",
    "A small boat floating on the water near the beach.",
    "A young boy throwing a frisbee in a green park.",
    "A kitchen with a white refrigerator, an oven and a sink.",
    "The picture shows a cow and a horse in a field.",
    "A simple drawing showing a circle, a square and a triangle on a lawn.",
    "There is a bird in the sky above the trees.",
    "The answer is yes. The answer is no. Right or wrong.",
]
TINY_CORPUS: list[str] = _PROMPT_SENTENCES + [
    f"a {name}, the {name}, {name}s" for _, name, _ in COCO_CATEGORIES
]


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of one family's tokenizer.

    ``named`` are model-specific special tokens that the processor reads as tokenizer
    attributes (e.g. Gemma-3's ``tokenizer.boi_token``); ``extra`` are other special tokens;
    ``appended`` are named ones that get the ids after the trained vocabulary, for models that
    tell token kinds apart by id range (Gemma-3n's vision and audio tokens lie above all text).
    A ``bos`` token, if given, is prepended to every encoded text.
    """

    eos: str
    pad: str
    bos: str | None = None
    unk: str | None = None
    extra: tuple[str, ...] = ()
    named: dict[str, str] = field(default_factory=dict)
    appended: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[str]:
        tokens = [self.bos, self.eos, self.pad, self.unk, *self.extra, *self.named.values()]
        return list(dict.fromkeys(token for token in tokens if token is not None))


def build_tokenizer(special_tokens: SpecialTokens, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on :data:`TINY_CORPUS`, with the given special tokens.

    ``vocab_size`` is an upper bound: the small corpus usually runs out of merges before it.
    """
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens.all(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    backend.add_special_tokens(list(special_tokens.appended.values()))  # ids in this order
    bos = special_tokens.bos
    if bos is None:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=special_tokens.eos,
        pad_token=special_tokens.pad,
        unk_token=special_tokens.unk,
        extra_special_tokens={**special_tokens.named, **special_tokens.appended}
        or list(special_tokens.extra),
    )
