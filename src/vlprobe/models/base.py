"""The mechanism every model family shares: loading, decoder lookup, batch inputs, tiny models.

A family is a subclass of :class:`LoadedVLM` that states only what differs between families:
where the language model sits in the checkpoint, how the image placeholder reads before the
prompt, its special tokens, and how to build a tiny randomly initialised model of the real class.
"""

from __future__ import annotations

import abc
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.utils import ModelOutput

from vlprobe.models.tiny import SpecialTokens, build_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PADDING_SIDES = ("left", "right")

# Keys of a config entry's `tiny:` block that every family understands, with their defaults;
# None means "derived": intermediate_size = 2 * hidden_size.
TINY_DEFAULTS: dict[str, Any] = {
    "num_layers": None,  # required
    "hidden_size": 64,
    "seed": 0,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": None,
    "vocab_size": 1000,
    "vision_hidden_size": 32,
    "vision_layers": 2,
    "vision_attention_heads": 2,
}


class ModelError(ValueError):
    """A model that cannot be used as configured; the message names the model."""


class LoadedVLM(abc.ABC):
    """A vision-language model and its processor, with what probing needs to know about them.

    ``decoder_layers[i]`` receives hidden state ``i`` as input and ``final_norm`` outputs hidden
    state ``num_layers``: the indices of ``output_hidden_states=True``.
    """

    family: ClassVar[str]
    # dotted path, inside the loaded model, of the language model (it has .layers and .norm)
    language_model_path: ClassVar[str] = "model.language_model"
    # special tokens of the tiny model's tokenizer (those of the real checkpoints)
    special_tokens: ClassVar[SpecialTokens]
    # tiny keys of this family only, with their defaults
    tiny_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        device: str | torch.device = "cpu",
        padding_side: str = "left",
    ) -> None:
        self.name = name
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.padding_side = padding_side
        self.image_token = image_token_of(name, processor)
        if self.tokenizer.pad_token is None:
            # batches need padding; many causal LM checkpoints ship without a pad token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        language_model = model.get_submodule(self.language_model_path)
        self.decoder_layers: nn.ModuleList = language_model.layers
        self.final_norm: nn.Module = language_model.norm

    @classmethod
    def load(
        cls, name: str, entry: Mapping[str, Any], device: str | torch.device = "cpu"
    ) -> LoadedVLM:
        """Load the checkpoint of a config entry and check its decoder depth."""
        hf_id = entry["hf_id"]
        dtype = entry.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ModelError(f"model {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        source = {
            "revision": entry.get("revision"),
            "trust_remote_code": entry.get("trust_remote_code", False),
        }
        try:
            processor = AutoProcessor.from_pretrained(hf_id, **source)
            image_token_of(name, processor)  # before loading weights: fail fast
            model = AutoModelForImageTextToText.from_pretrained(
                hf_id,
                dtype=DTYPES[dtype],
                attn_implementation=entry.get("attn_implementation", "sdpa"),
                **source,
            )
        except (OSError, ValueError) as err:
            if isinstance(err, ModelError):
                raise
            raise ModelError(f"model {name!r}: cannot load {hf_id}: {err}") from err
        loaded = cls(name, model, processor, device=device)
        if loaded.num_layers != entry["num_layers"]:
            raise ModelError(
                f"model {name!r}: config says num_layers={entry['num_layers']} but {hf_id} has "
                f"{loaded.num_layers} decoder layers"
            )
        return loaded

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    @property
    def num_layers(self) -> int:
        """Decoder layers; there are ``num_layers + 1`` hidden states."""
        return len(self.decoder_layers)

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def image_placeholder(self) -> str:
        """The text put before the prompt where the image goes; the processor expands it."""
        return self.image_token

    def prompt(self, text: str) -> str:
        """The model's text input for a prompt: the image placeholder, then the prompt."""
        return self.image_placeholder + text

    def inputs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> BatchFeature:
        """Model inputs for a batch of (image, prompt) pairs, padded on ``padding_side``."""
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(
                f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}"
            )
        batch = self.processor(
            images=[[image] for image in images],  # one image per prompt
            text=[self.prompt(text) for text in texts],
            padding=True,
            padding_side=self.padding_side,
            return_tensors="pt",
        )
        return batch.to(device=self.device, dtype=self.model.dtype)

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        """One forward pass without KV cache; logits only at the last position."""
        return self.model(**inputs, use_cache=False, logits_to_keep=1, **kwargs)

    @classmethod
    def build_tiny(cls, out_dir: str | os.PathLike, tiny: Mapping[str, Any]) -> None:
        """Build, seed and save a tiny model and processor of this family (see build_tiny_model)."""
        spec = cls.tiny_spec(tiny)
        torch.manual_seed(spec["seed"])
        tokenizer = build_tokenizer(cls.special_tokens, spec["vocab_size"])
        model, processor = cls.tiny_model_and_processor(tokenizer, spec)
        target = Path(out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def tiny_spec(cls, tiny: Mapping[str, Any]) -> dict[str, Any]:
        """The tiny keys with defaults filled in; unknown or missing keys are named in the error."""
        defaults = {**TINY_DEFAULTS, **cls.tiny_defaults}
        unknown = sorted(set(tiny) - set(defaults))
        if unknown:
            raise ModelError(
                f"tiny {cls.family} model: unknown keys {unknown}; known: {sorted(defaults)}"
            )
        if "num_layers" not in tiny:
            raise ModelError(f"tiny {cls.family} model: num_layers is required")
        spec = {**defaults, **tiny}
        if spec["intermediate_size"] is None:
            spec["intermediate_size"] = 2 * spec["hidden_size"]
        return spec

    @classmethod
    @abc.abstractmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        """A randomly initialised model of the family's real class, and its processor."""


def image_token_of(name: str, processor: ProcessorMixin) -> str:
    """The processor's image placeholder token, which its tokenizer must know as one token."""
    image_token = getattr(processor, "image_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_token is None or tokenizer is None or image_token not in tokenizer.get_vocab():
        raise ModelError(
            f"model {name!r}: its processor {type(processor).__name__} has no image token in its "
            f"tokenizer (image_token={image_token!r}); is it a vision-language checkpoint?"
        )
    return image_token


def text_config_kwargs(tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]) -> dict:
    """Decoder config arguments of a tiny model, shared by the Llama-like text configs."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": spec["hidden_size"],
        "intermediate_size": spec["intermediate_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads": spec["num_key_value_heads"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def vision_config_kwargs(spec: Mapping[str, Any]) -> dict:
    """Vision tower config arguments of a tiny model (CLIP/SigLIP-style ViT configs)."""
    return {
        "hidden_size": spec["vision_hidden_size"],
        "intermediate_size": 2 * spec["vision_hidden_size"],
        "num_hidden_layers": spec["vision_layers"],
        "num_attention_heads": spec["vision_attention_heads"],
    }
