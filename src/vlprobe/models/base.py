"""The mechanism every model family shares: loading, decoder lookup, batch inputs, image prefix
reuse, tiny models.

A family is a subclass of :class:`LoadedVLM` that states only what differs between families:
where the language model sits in the checkpoint (and its Auto class), how the image placeholder
reads before the prompt, which tokens hold the image features, its special tokens, whether its
image prefix can be reused across prompts, its position ids when they are not the plain 0, 1,
2, ... (M-RoPE, Kosmos-2's padding-skipping ones), and how to build a tiny randomly initialised
model of the real class; and, where a family needs it, how the processor is called
(:meth:`LoadedVLM.process`), how prompts are tokenised for prefix reuse
(:meth:`LoadedVLM.prompt_token_ids`), how its processor is loaded
(:meth:`LoadedVLM.load_processor`) and what is done to model and processor once loaded
(:meth:`LoadedVLM.prepare`). A family whose checkpoints come in another layout too (Apple's
remote-code FastVLM) names that layout's adapter by model type (:meth:`LoadedVLM.for_model_type`).

Remote-code checkpoints (a model type that transformers does not have) load only with
``trust_remote_code``, through the class their config's ``auto_map`` names; their decoder is
found through ``get_decoder()`` if the family's path does not exist in them.

Image prefix reuse. The prompts of one image share a prefix: the image block (the processor's
expansion of the placeholder) and whatever text all of them start with. In a decoder that is causal
over image tokens, the prefix's hidden states and keys/values do not depend on what follows, so
:meth:`LoadedVLM.prefix_batch` prepares the prefixes of several images for one forward pass that
fills a KV cache (:meth:`LoadedVLM.forward_cached`), and :meth:`LoadedVLM.suffix_inputs` the
remaining tokens of any of their prompts, to be run on a copy of that cache
(:meth:`LoadedVLM.cache_rows`). The split is made on the token ids of the full text, so every
prompt's tokens are exactly those of the plain path (no tokenisation across the boundary).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import functools
import importlib.metadata
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from packaging.requirements import Requirement
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.dependency_versions_table import deps as transformers_requirements
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from vlprobe.models.tiny import SpecialTokens, build_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype of a config entry's ``dtype``: one of :data:`DTYPES`, or ``auto`` for
    bfloat16 on CUDA and float32 elsewhere (CPUs run bfloat16 many times slower)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[dtype]


PADDING_SIDES = ("left", "right")
# raw: the image placeholder, then the prompt (Tao et al.); chat: one user turn holding the image
# then the prompt, rendered by the checkpoint's own chat template (the compact-model study)
PROMPT_FORMATS = ("raw", "chat")
# the real checkpoints' chat templates that a family's tiny models carry (models/chat_templates)
CHAT_TEMPLATES = Path(__file__).parent / "chat_templates"
# processor outputs with one value per token ([batch, tokens]), and the value of a padding token
# (None: the tokenizer's pad token id)
TOKEN_INPUTS: dict[str, int | None] = {
    "input_ids": None,
    "attention_mask": 0,
    "token_type_ids": 0,
    "mm_token_type_ids": 0,
    "image_embeds_position_mask": 0,  # Kosmos-2: where the image features go
    "moe_mm_token_type_ids": 0,  # ERNIE-4.5-VL: which tokens its vision experts take
}

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


class NoImageTokenError(ModelError):
    """A checkpoint whose processor, tokenizer or config has no image token."""


def require_packages(subject: str, packages: Iterable[str], purpose: str) -> None:
    """Check that each package is installed at the version the installed transformers asks for
    (its own dependency table), before a deep import or version check fails inside it.

    A failure is one ModelError line: ``subject`` (the model), ``purpose``, the needed and the
    installed version.
    """
    for package in packages:
        needed = Requirement(transformers_requirements[package])
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not needed.specifier.contains(installed, prereleases=True):
            raise ModelError(
                f"{subject}: {purpose} needs {needed} (transformers {transformers.__version__}'s "
                f"requirement), but {f'{package} {installed} is' if installed else 'it is not'} "
                f"installed; pip install '{needed}'"
            )


@dataclass
class PrefixBatch:
    """The shared prefixes of several images, ready for one forward pass, and their prompts' rest.

    ``inputs`` hold the prefixes left-padded to the longest, with the images' pixel inputs;
    ``suffixes[i][j]`` are the token ids that follow the prefix in prompt ``j`` of image ``i``
    (never empty); ``position_ids`` are those of the prefix pass (None: the model's default) and
    ``next_position[i]`` is the position id of the first suffix token of image ``i``.
    """

    inputs: BatchFeature
    suffixes: list[list[list[int]]]
    position_ids: torch.Tensor | None
    next_position: torch.Tensor

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    @property
    def cached(self) -> CachedRows:
        """The prefixes as suffix passes continue them."""
        sections = (
            None
            if self.position_ids is None or self.position_ids.ndim != 3
            else (self.position_ids.shape[0])
        )
        return CachedRows(self.attention_mask, self.next_position, sections)


@dataclass(frozen=True)
class CachedRows:
    """Sequences whose keys and values a KV cache holds, as a suffix pass continues them: their
    attention mask [rows, width] (padding included), the position id of each one's next token,
    and the number of M-RoPE sections of the positions (None: 1-d positions)."""

    attention_mask: torch.Tensor
    next_position: torch.Tensor
    position_sections: int | None

    def continued(self, rows: torch.Tensor, suffix_mask: torch.Tensor) -> CachedRows:
        """Rows ``rows`` of these sequences, each followed by its row of ``suffix_mask``'s
        tokens (right-padded): what the cache of a suffix pass over them holds."""
        return CachedRows(
            torch.cat([self.attention_mask[rows], suffix_mask], dim=1),
            self.next_position[rows] + suffix_mask.sum(dim=1),
            self.position_sections,
        )


# not 0: the demo's tiny models are themselves random initialisations with seed 0
RANDOM_INIT_SEED = 1


def check_local_checkpoint(name: str, hf_id: str | os.PathLike) -> None:
    """Fail with one line when ``hf_id`` names a local checkpoint that is not there.

    A hub id has the form ``org/name``; anything else (absolute, relative with ``.`` or ``~``,
    or deeper than one slash) is a path, and transformers would otherwise answer with "Repo id
    must be in the form 'repo_name'...".
    """
    text = os.fspath(hf_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: {text} has no config.json; not a checkpoint")
        return
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise ModelError(
            f"model {name!r}: hf_id {text} is not a checkpoint directory (no such directory); "
            "fix the path, or give a hub id of the form 'org/name'"
        )


def random_init_model(
    auto_model: type, hf_id: str, source: Mapping[str, Any], settings: Mapping[str, Any]
) -> PreTrainedModel:
    """The checkpoint's architecture with freshly initialised weights (the random-init baseline).

    Built from the checkpoint's config alone, under a fixed seed, so no weights are read and
    the baseline is the same in every run.
    """
    config = AutoConfig.from_pretrained(hf_id, **source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return auto_model.from_config(
            config, trust_remote_code=source.get("trust_remote_code", False), **settings
        )


class LoadedVLM(abc.ABC):
    """A vision-language model and its processor, with what probing needs to know about them.

    ``decoder_layers[i]`` receives hidden state ``i`` as input and ``final_norm`` outputs hidden
    state ``num_layers``: the indices of ``output_hidden_states=True``.
    """

    family: ClassVar[str]
    # the config.json model types whose checkpoints this family serves (empty: the family's
    # name), which `family: auto` maps to it
    model_types: ClassVar[tuple[str, ...]] = ()
    # dotted path, inside the loaded model, of the language model (it has .layers), and the
    # name of its final norm in it; None: found generically (get_decoder(), FINAL_NORM_NAMES)
    language_model_path: ClassVar[str | None] = None
    final_norm_name: ClassVar[str | None] = None
    # the Auto class that loads the family's checkpoints
    auto_model_class: ClassVar[type] = AutoModelForImageTextToText
    # special tokens of the tiny model's tokenizer (those of the real checkpoints)
    special_tokens: ClassVar[SpecialTokens]
    # tiny keys of this family only, with their defaults
    tiny_defaults: ClassVar[dict[str, Any]] = {}
    # True if the image block and the text before the prompt never attend to the prompt, so that
    # their keys and values are computed once per image and reused for all of its prompts: true
    # for decoders that are causal over image tokens. False for prefix-LMs (PaliGemma: image and
    # prompt form one bidirectional block), which always take the plain path.
    prefix_reuse: ClassVar[bool] = True
    # packages the family's model class imports, named as in transformers' dependency table
    requires: ClassVar[tuple[str, ...]] = ()
    # the file in models/chat_templates holding the chat template of the family's real
    # checkpoints, which its tiny models carry (None: they have none)
    tiny_chat_template: ClassVar[str | None] = None

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        device: str | torch.device = "cpu",
        padding_side: str = "left",
        prompt_format: str = "raw",
        generation_prompt: bool = False,
    ) -> None:
        self.name = name
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.padding_side = padding_side
        self.prompt_format = prompt_format
        self.generation_prompt = generation_prompt
        self.image_token = self.image_token_in(name, processor)
        self.image_token_id = self.image_feature_token_id(name, model)
        if self.tokenizer.pad_token is None:
            # batches need padding; many causal LM checkpoints ship without a pad token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        language_model = self.find_language_model(name, model)
        self.decoder_layers: nn.ModuleList = language_model.layers
        self.final_norm: nn.Module = getattr(
            language_model, final_norm_of(language_model, self.final_norm_name)
        )

    @classmethod
    def load(
        cls, name: str, entry: Mapping[str, Any], device: str | torch.device = "cpu"
    ) -> LoadedVLM:
        """Load the checkpoint of a config entry and check its decoder depth."""
        hf_id = entry["hf_id"]
        dtype = entry.get("dtype", "auto")
        if dtype not in {*DTYPES, "auto"}:
            raise ModelError(f"model {name!r}: dtype {dtype!r} is not one of {[*DTYPES, 'auto']}")
        source = {
            "revision": entry.get("revision"),
            "trust_remote_code": entry.get("trust_remote_code", False),
        }
        check_local_checkpoint(name, hf_id)
        try:
            checkpoint, _ = PretrainedConfig.get_config_dict(hf_id, revision=source["revision"])
            check_supported(name, hf_id, checkpoint.get("model_type"))
            try:
                adapter = cls.for_model_type(checkpoint.get("model_type"))
            except ModelError as err:
                raise ModelError(f"model {name!r}: {hf_id}: {err}") from err
            adapter.check_checkpoint(name, hf_id, checkpoint)
            require_packages(f"model {name!r}", adapter.requires, adapter.family)
            auto_model = model_class_of(name, hf_id, checkpoint, source, adapter.auto_model_class)
            processor = adapter.load_processor(name, hf_id, source)
            settings = {
                "dtype": resolve_dtype(dtype, device),
                "attn_implementation": adapter.attn_implementation(
                    entry.get("attn_implementation", "sdpa")
                ),
            }
            if entry.get("baseline") == "random_init":
                model = random_init_model(auto_model, hf_id, source, settings)
            else:
                model = auto_model.from_pretrained(hf_id, **settings, **source)
            # on its device already: preparing may run the model (Apple's FastVLM encodes an image)
            model, processor = adapter.prepare(name, model.to(device), processor, hf_id, source)
        except (OSError, ValueError, ImportError) as err:  # ImportError: e.g. no flash-attn
            if isinstance(err, ModelError):
                raise
            # transformers' messages span lines; the job log wants one
            reason = " ".join(str(err).split())
            raise ModelError(f"model {name!r}: cannot load {hf_id}: {reason}") from err
        prompt_format = entry.get("prompt_format", "raw")
        if prompt_format not in PROMPT_FORMATS:
            raise ModelError(
                f"model {name!r}: prompt_format {prompt_format!r} is not one of {PROMPT_FORMATS}"
            )
        if prompt_format == "chat" and adapter.chat_template_of(processor) is None:
            raise ModelError(
                f"model {name!r}: prompt_format chat, but the processor of {hf_id} has no chat "
                "template; use prompt_format: raw"
            )
        loaded = adapter(
            name,
            model,
            processor,
            device=device,
            prompt_format=prompt_format,
            generation_prompt=entry.get("generation_prompt", False),
        )
        if loaded.num_layers != entry["num_layers"]:
            raise ModelError(
                f"model {name!r}: config says num_layers={entry['num_layers']} but {hf_id} has "
                f"{loaded.num_layers} decoder layers"
            )
        if entry.get("hidden_size", loaded.hidden_size) != loaded.hidden_size:
            raise ModelError(
                f"model {name!r}: config says hidden_size={entry['hidden_size']} but {hf_id} "
                f"has {loaded.hidden_size}"
            )
        return loaded

    @classmethod
    def for_model_type(cls, model_type: str | None) -> type[LoadedVLM]:
        """The adapter of this family for checkpoints of ``model_type`` (config.json's): this
        class, unless the family's checkpoints come in layouts that need their own."""
        return cls

    @classmethod
    def check_checkpoint(cls, name: str, hf_id: str, checkpoint: Mapping[str, Any]) -> None:
        """Fail with one line, before any weights load, for a checkpoint of this family's type
        that its adapter cannot probe (``checkpoint``: its config.json); by default none."""
        return

    @classmethod
    def attn_implementation(cls, configured: str) -> str:
        """The attention implementation to load the model with, given the entry's (whose
        default is sdpa): that one, unless the family's model class lacks it."""
        return configured

    @classmethod
    def load_processor(
        cls, name: str, hf_id: str, source: Mapping[str, Any]
    ) -> ProcessorMixin | PreTrainedTokenizerBase:
        """The checkpoint's processor, checked for an image token before any weights are read."""
        processor = AutoProcessor.from_pretrained(hf_id, **source)
        cls.image_token_in(name, processor)
        if getattr(processor, "chat_template", None) is None:
            # the checkpoint's chat_template.jinja, as its tokenizer read it: some processor
            # classes drop it on load (Phi-4-multimodal's takes no chat_template argument in
            # transformers 5.23), and some conversions wrote it for the tokenizer only (FastVLM's)
            processor.chat_template = processor.tokenizer.chat_template
        return processor

    @classmethod
    def prepare(
        cls,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin | PreTrainedTokenizerBase,
        hf_id: str,
        source: Mapping[str, Any],
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        """The loaded model (on its device) and processor made ready for probing (e.g. an
        adapter of the checkpoint loaded into the model)."""
        return model, processor

    @classmethod
    def image_token_in(cls, name: str, processor: ProcessorMixin) -> str:
        """The placeholder token that the processor expands into the image's tokens."""
        return image_token_of(name, processor)

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int | None:
        """The id of the tokens whose embeddings the model replaces by image features: the
        config's ``image_token_id`` (or ``image_token_index``), or its vision config's."""
        configs = [model.config, getattr(model.config, "vision_config", None)]
        token_id = next(
            (
                value
                for config in configs
                for key in IMAGE_TOKEN_ID_KEYS
                if (value := getattr(config, key, None)) is not None
            ),
            None,
        )
        if token_id is None:
            raise NoImageTokenError(
                f"model {name!r}: its config ({type(model.config).__name__}) has no "
                "image_token_id; is it a vision-language checkpoint?"
            )
        return token_id

    def find_language_model(self, name: str, model: PreTrainedModel) -> nn.Module:
        """The decoder (with ``.layers`` and the final norm): at ``language_model_path``, else
        (remote code) wherever the model's ``get_decoder`` points."""
        language_model = None
        if self.language_model_path is not None:
            with contextlib.suppress(AttributeError):  # remote code: elsewhere
                language_model = model.get_submodule(self.language_model_path)
        if language_model is None:
            language_model = decoder_of(model)
        if not isinstance(getattr(language_model, "layers", None), nn.ModuleList) or (
            final_norm_of(language_model, self.final_norm_name) is None
        ):
            raise ModelError(
                f"model {name!r}: cannot find the decoder layers of {type(model).__name__} "
                f"(looked at {self.language_model_path!r} and get_decoder())"
            )
        return language_model

    def layer_input_state(self, layer_input: torch.Tensor) -> torch.Tensor:
        """The hidden state [batch, tokens, hidden] in what a decoder layer receives as its
        hidden states: all of it, except in decoders that carry several streams (Gemma-3n's
        AltUp; the hyper-connections of GLM-5.3-Flash and Qwen4-Exp, see HyperConnectionsMixin)."""
        return layer_input

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

    # text after the image token, before the prompt (a newline where the chat template has one);
    # None: the image's text as the checkpoint's chat template writes it (image_placeholder)
    image_token_suffix: ClassVar[str | None] = None

    @functools.cached_property
    def image_placeholder(self) -> str:
        """The text put before the prompt where the image goes; the processor expands it.

        The image token and :attr:`image_token_suffix`; where that is None, what the chat
        template writes for an image part before a text part (e.g. Qwen2-VL's
        ``<|vision_start|><|image_pad|><|vision_end|>``, LLaVA's ``<image>\n``), so that the
        raw format reads the image as the checkpoint's own turns do; the image token alone
        where there is no template.
        """
        if self.image_token_suffix is not None:
            return self.image_token + self.image_token_suffix
        return image_text_of_template(self.processor, self.image_token) or self.image_token

    # options of the family's processor call (the processor's own defaults where empty)
    processor_kwargs: ClassVar[dict[str, Any]] = {}

    # how a chat turn holds the image: "parts" (an image part, then a text part, which the
    # processor's template turns into its image placeholder) or "text" (one string, the image
    # placeholder then the prompt, rendered by the tokenizer's template: checkpoints whose
    # template knows no images, e.g. Apple's FastVLM, whose model card writes the turn so)
    chat_turn_content: ClassVar[str] = "parts"

    @classmethod
    def chat_template_of(cls, processor: ProcessorMixin) -> str | dict | None:
        """The chat template that renders this family's chat-format prompts (None: none)."""
        holder = processor.tokenizer if cls.chat_turn_content == "text" else processor
        return getattr(holder, "chat_template", None)

    def prompt(self, text: str) -> str:
        """The model's text input for a prompt: in raw format the image placeholder, then the
        prompt; in chat format one user turn holding the image, then the prompt, rendered by the
        checkpoint's own chat template (its default system prompt kept; the assistant turn's
        start only with ``generation_prompt``)."""
        if self.prompt_format == "raw":
            return self.image_placeholder + text
        if self.chat_turn_content == "text":
            turn = {"role": "user", "content": self.image_placeholder + text}
            render = self.tokenizer.apply_chat_template
        else:
            turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            render = self.processor.apply_chat_template
        return render([turn], add_generation_prompt=self.generation_prompt, tokenize=False)

    @functools.cached_property
    def text_kwargs(self) -> dict[str, Any]:
        """Tokenizer options for model texts: a chat template that writes the BOS token itself
        gets none added (as the processor's apply_chat_template does). Rendered once: whether
        the text starts with BOS does not depend on the prompt or the generation prompt."""
        bos = self.tokenizer.bos_token
        if self.prompt_format == "chat" and bos is not None and self.prompt("").startswith(bos):
            return {"add_special_tokens": False}
        return {}

    def inputs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> BatchFeature:
        """Model inputs for a batch of (image, prompt) pairs, padded on ``padding_side``."""
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(
                f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}"
            )
        batch = self.process(
            images, [self.prompt(text) for text in texts], self.padding_side, **self.text_kwargs
        )
        return batch.to(device=self.device, dtype=self.model.dtype)

    def process(
        self,
        images: Sequence[Image.Image],
        texts: Sequence[str],
        padding_side: str,
        **kwargs: Any,
    ) -> BatchFeature:
        """The processor's tensors for (image, model text) pairs, padded on ``padding_side``."""
        batch = self.processor(
            images=[[image] for image in images],  # one image per text
            text=list(texts),
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **self.processor_kwargs,
            **kwargs,
        )
        batch.pop("labels", None)  # PaliGemma's processor writes training labels too
        return batch

    def image_token_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Where the image features go in a batch of model inputs: [batch, tokens] bool."""
        return inputs["input_ids"] == self.image_token_id

    # the model's `logits_to_keep` in every forward pass: the last position's logits only
    logits_to_keep: ClassVar[int | torch.Tensor] = 1

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        """One forward pass without KV cache; logits only at the last position."""
        return self.model(**inputs, use_cache=False, logits_to_keep=self.logits_to_keep, **kwargs)

    # ------------------------------------------------------------------ image prefix reuse

    def prefix_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[str]]
    ) -> PrefixBatch | None:
        """The shared prefixes of ``images`` and the suffixes of their ``prompts`` (per image).

        Every prompt's token ids are those of the plain path (:meth:`prompt_token_ids`); this is
        checked against the processor's own ids for the first prompt of each image. An image's
        prefix is the longest run of token ids that all its prompts start with, stopping one
        token before the end of the shortest prompt, so no suffix is empty. None if the prompts
        cannot share a prefix (the ids differ from the processor's, or an image token would fall
        into a suffix); the caller then takes the plain path.
        """
        if not self.prefix_reuse:
            return None
        processed, all_ids = self.prompt_token_ids(images, prompts)
        mask = processed["attention_mask"].bool()
        image_related = self.image_bound_mask(processed)
        lengths, suffixes = [], []
        for row, ids in enumerate(all_ids):
            if ids[0] != processed["input_ids"][row][mask[row]].tolist():
                log.warning(
                    "%s: a prompt tokenised apart from its image differs from the processor's "
                    "tokens; these images take the plain path",
                    self.name,
                )
                return None
            length = shared_prefix_length(ids)
            if image_related[row][mask[row]][length:].any():
                log.warning(
                    "%s: image tokens end less than one token before the end of a prompt; "
                    "these images take the plain path",
                    self.name,
                )
                return None
            lengths.append(length)
            suffixes.append([prompt_ids[length:] for prompt_ids in ids])
        prefix: dict[str, Any] = {}
        for key, values in processed.items():
            if key in TOKEN_INPUTS:  # keep each image's prefix, padded anew on the left
                pad = TOKEN_INPUTS[key]
                prefix[key] = left_padded(
                    [values[row][mask[row]][:n] for row, n in enumerate(lengths)],
                    self.tokenizer.pad_token_id if pad is None else pad,
                )
            else:  # pixel inputs
                prefix[key] = values
        # positions on the CPU: no wait for the device, which may be busy with the last batch
        position_ids, next_position = self.prefix_positions(BatchFeature(prefix))
        return PrefixBatch(
            BatchFeature(prefix).to(device=self.device, dtype=self.model.dtype),
            suffixes,
            None if position_ids is None else position_ids.to(self.device),
            next_position.to(self.device),
        )

    def prompt_token_ids(
        self, images: Sequence[Image.Image], prompts: Sequence[Sequence[str]]
    ) -> tuple[BatchFeature, list[list[list[int]]]]:
        """The processor's output for each image with its first prompt (left-padded), and the
        token ids of every prompt of every image as the plain path has them.

        Each image is processed once: the other prompts get the same replacement text for the
        image placeholder, then the tokenizer, as the processor does it.
        """
        processed = self.process(
            images,
            [self.prompt(texts[0]) for texts in prompts],
            "left",
            return_text_replacement_offsets=True,
            **self.text_kwargs,
        )
        offsets = processed.pop("text_replacement_offsets", None)
        if offsets is not None:
            replacements = [[offset["replacement"] for offset in row] for row in offsets]
            expanded: list[str] = []
            for image_replacements, texts in zip(replacements, prompts, strict=True):
                image_texts, _ = self.processor.get_text_with_replacements(
                    [self.prompt(text) for text in texts], image_replacements * len(texts)
                )
                expanded.extend(image_texts)
            flat = iter(self.tokenizer(expanded, **self.text_kwargs)["input_ids"])
            ids = [[next(flat) for _ in texts] for texts in prompts]
            mask = processed["attention_mask"].bool()
            if all(
                image_ids[0] == row[row_mask].tolist()
                for image_ids, row, row_mask in zip(ids, processed["input_ids"], mask, strict=True)
            ):
                return processed, ids
        # a processor that does not say how it expanded the placeholder (Idefics2's), or that
        # writes more than the expansion (Emu3's adds BOS to the text): every prompt is
        # processed with its image
        return processed, [
            self.processed_ids([image] * len(texts), [self.prompt(t) for t in texts])
            for image, texts in zip(images, prompts, strict=True)
        ]

    def processed_ids(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[list[int]]:
        """The processor's token ids of (image, model text) pairs, without padding."""
        batch = self.process(images, texts, "left", **self.text_kwargs)
        mask = batch["attention_mask"].bool()
        return [ids[keep].tolist() for ids, keep in zip(batch["input_ids"], mask, strict=True)]

    def image_bound_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The tokens that depend on the image, which a reused prefix must hold: [batch, tokens]
        bool. The features' positions and the tokens around them (e.g. InternVL's <img> ...
        </img>), and in some families tokens whose positions the image sets (MiniCPM-V 4.7)."""
        return self.image_token_mask(inputs) | torch.isin(
            inputs["input_ids"],
            torch.tensor(self.image_token_ids, device=inputs["input_ids"].device),
        )

    @property
    def image_token_ids(self) -> list[int]:
        """Ids of the tokens that mark the image (the features' placeholder and, per processor,
        the tokens around it); they must all be in the prefix."""
        ids = [i for i in getattr(self.processor, "image_token_ids", None) or [] if i is not None]
        return ids or [self.tokenizer.convert_tokens_to_ids(self.image_token)]

    def prefix_positions(self, inputs: BatchFeature) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Position ids of the prefix pass (None: the model's default) and, per image, the
        position id of the token after the prefix; ``inputs`` and results on the CPU.

        Plain RoPE decoders number every position of the padded batch 0, 1, 2, ..., as their
        plain forward does; since rotary attention depends only on position differences, the
        left padding shifts nothing.
        """
        rope_index = self.rope_index_function
        if rope_index is not None:
            # multimodal rotary positions (M-RoPE: image tokens get (temporal, height, width)
            # positions, text after an image continues from the largest of them): the model's
            # own function, given the inputs it names (padding excluded through the mask); its
            # `rope_deltas` (largest position + 1 - tokens) give the next position
            names = inspect.signature(rope_index).parameters
            position_ids, rope_deltas = rope_index(
                **{key: value for key, value in inputs.items() if key in names}
            )
            return position_ids, inputs["attention_mask"].sum(dim=1) + rope_deltas.reshape(-1)
        batch, width = inputs["input_ids"].shape
        return None, torch.full((batch,), width, dtype=torch.long)

    @functools.cached_property
    def rope_index_function(self) -> Any:
        """The model's multimodal rope-index function (``get_rope_index``), None if it has
        none (plain 1-d positions)."""
        for module in (self.model, getattr(self.model, "model", None)):
            function = getattr(module, "get_rope_index", None)
            if callable(function):
                return function
        return None

    def suffix_position_ids(self, next_position: torch.Tensor, width: int) -> torch.Tensor:
        """Position ids [batch, width] of suffix tokens that follow prefixes ending before
        ``next_position`` (one per suffix)."""
        return next_position[:, None] + torch.arange(width, device=next_position.device)

    def suffix_inputs(
        self, cached: CachedRows, rows: torch.Tensor, suffixes: Sequence[Sequence[int]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs of a forward pass over ``suffixes`` (right-padded), suffix ``k`` continuing
        sequence ``rows[k]`` of ``cached``; and the suffix tokens' mask [batch, width].

        The attention mask covers the cached sequence (with its padding) and the suffix.
        """
        width = max(len(ids) for ids in suffixes)
        input_ids = torch.full((len(suffixes), width), self.tokenizer.pad_token_id)
        suffix_mask = torch.zeros((len(suffixes), width), dtype=torch.long)
        for k, ids in enumerate(suffixes):
            input_ids[k, : len(ids)] = torch.tensor(ids)
            suffix_mask[k, : len(ids)] = 1
        input_ids, suffix_mask = input_ids.to(self.device), suffix_mask.to(self.device)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.cat([cached.attention_mask[rows], suffix_mask], dim=1),
            "position_ids": self.suffix_position_ids(cached.next_position[rows], width),
        }
        if cached.position_sections is not None:
            # M-RoPE: text tokens have the same position in every section
            inputs["position_ids"] = inputs["position_ids"].expand(cached.position_sections, -1, -1)
        return inputs, suffix_mask

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config.get_text_config())

    @staticmethod
    def cache_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
        """A copy of ``cache`` holding the given batch rows (repeated as often as listed).

        The copy's own later updates concatenate into new tensors; ``cache`` stays as it is.
        """
        selected = copy.deepcopy(cache)
        # reorder_cache (beam search's row selection) knows every kind of cache layer: keys and
        # values, and the recurrent states of linear-attention layers
        selected.reorder_cache(rows)
        return selected

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        """One forward pass that continues ``cache`` and appends this pass's keys and values."""
        return self.model(
            **inputs,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=self.logits_to_keep,
            **kwargs,
        )

    @classmethod
    def build_tiny(cls, out_dir: str | os.PathLike, tiny: Mapping[str, Any]) -> None:
        """Build, seed and save a tiny model and processor of this family (see build_tiny_model)."""
        spec = cls.tiny_spec(tiny)
        require_packages(f"tiny {cls.family} model", cls.requires, cls.family)
        torch.manual_seed(spec["seed"])
        tokenizer = build_tokenizer(cls.special_tokens, spec["vocab_size"])
        model, processor = cls.tiny_model_and_processor(tokenizer, spec)
        if cls.tiny_chat_template is not None:
            processor.chat_template = (CHAT_TEMPLATES / cls.tiny_chat_template).read_text()
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


class HyperConnectionsMixin:
    """For decoders whose layers read several residual streams per token (hyper-connections),
    which the family's ``layer_input_state`` collapses into one hidden state:
    ``forward(output_hidden_states=True)`` returns the layers' inputs collapsed likewise, and
    transformers' last hidden state (the decoder's output, one stream) as it is. Put it before
    the adapter class in the bases."""

    def forward(self, inputs: Mapping[str, Any], **kwargs: Any) -> ModelOutput:
        output = super().forward(inputs, **kwargs)
        if kwargs.get("output_hidden_states"):
            *streams, final = output.hidden_states
            output.hidden_states = (*map(self.layer_input_state, streams), final)
        return output


class GenericAdapter(LoadedVLM):
    """The generic adapter alone, for an image-text-to-text model type without a family class
    (``family: auto``): everything is found in the checkpoint; no tiny model is built."""

    family = "generic"

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        raise ModelError(f"no tiny model of {cls.family!r}: it has no family class")


def generic_adapter(model_type: str | None) -> type[LoadedVLM]:
    """The generic adapter for checkpoints of ``model_type``, which has no family class: only
    for transformers' image-text-to-text types (unsupported ones fail before this)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelError(
            f"family auto: model_type {model_type!r} is not an image-text-to-text type of "
            f"transformers {transformers.__version__} and has no family; name one"
        )
    log.warning(
        "family auto: model_type %r has no family class; the generic adapter is untested on it",
        model_type,
    )
    return type(f"Generic_{model_type}", (GenericAdapter,), {"family": model_type})


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, at most one less than the shortest sequence."""
    limit = min(len(ids) for ids in sequences) - 1
    first = sequences[0]
    for position in range(limit):
        if any(ids[position] != first[position] for ids in sequences[1:]):
            return position
    return max(limit, 0)


def padded_on(
    batch: BatchFeature,
    side: str,
    mask: str = "attention_mask",
    keys: Iterable[str] = TOKEN_INPUTS,
) -> BatchFeature:
    """``batch`` with the padding of its per-token inputs ``keys`` (those it has; by default
    :data:`TOKEN_INPUTS`) moved to ``side``, where ``batch[mask]`` is 0, for processors that pad
    one way only; the order of the other tokens kept, other inputs unchanged."""
    keep = batch[mask].bool()
    order = torch.argsort((keep if side == "left" else ~keep).int(), dim=1, stable=True)
    out = dict(batch)
    for key in set(batch) & {mask, *keys}:
        out[key] = torch.gather(batch[key], 1, order)
    return BatchFeature(out)


def left_padded(rows: Sequence[torch.Tensor], pad: int) -> torch.Tensor:
    """Stack 1-d tensors of different lengths into [len(rows), longest], padded on the left."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), pad, dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        out[index, width - len(row) :] = row
    return out


def model_class_of(
    name: str, hf_id: str, config: Mapping[str, Any], source: Mapping[str, Any], native: type
) -> type:
    """The Auto class that loads a checkpoint, read from its config.json (``config``) before any
    code runs: ``native`` for model types that transformers has; for a remote-code checkpoint
    (only with ``trust_remote_code``), the class that its ``auto_map`` names."""
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return native
    if not source["trust_remote_code"]:
        raise ModelError(
            f"model {name!r}: {hf_id} is a remote-code checkpoint (model_type {model_type!r} is "
            "not in transformers); set trust_remote_code: true in its entry to run its code"
        )
    auto_map = config.get("auto_map", {})
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
        if auto_class.__name__ in auto_map:
            return auto_class
    raise ModelError(
        f"model {name!r}: the remote code of {hf_id} has no AutoModelForImageTextToText or "
        f"AutoModelForCausalLM in its auto_map ({sorted(auto_map)})"
    )


# where the image features' token id sits in a config (or its vision config: Phi-4-multimodal)
IMAGE_TOKEN_ID_KEYS = ("image_token_id", "image_token_index")
# the names of a decoder's final norm across families, tried in this order
FINAL_NORM_NAMES = ("norm", "final_layernorm", "layer_norm", "final_norm", "ln_f")


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a model: what ``get_decoder()`` returns, or the stack inside it
    where that is a causal LM (``.model``) rather than the stack itself."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for candidate in (decoder, getattr(decoder, "model", None), getattr(decoder, "decoder", None)):
        if isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    return decoder


def final_norm_of(decoder: nn.Module, name: str | None = None) -> str | None:
    """The attribute name of a decoder's final norm: ``name``, else the first of
    :data:`FINAL_NORM_NAMES` that it has; None if it has none."""
    names = (name,) if name is not None else FINAL_NORM_NAMES
    return next((n for n in names if isinstance(getattr(decoder, n, None), nn.Module)), None)


def check_supported(name: str, hf_id: str, model_type: str | None) -> None:
    """Fail with one line, before any weights load, for a model type that vlprobe cannot
    probe (:data:`vlprobe.models.support.UNSUPPORTED`), naming the model, type and reason."""
    from vlprobe.models.support import UNSUPPORTED

    if model_type in UNSUPPORTED:
        raise ModelError(
            f"model {name!r}: {hf_id} has model_type {model_type!r}, which vlprobe cannot "
            f"probe: {UNSUPPORTED[model_type]}"
        )


# a text part that no chat template changes, to find what it writes around an image part
_SENTINEL = "VLPROBE_SENTINEL"


def image_text_of_template(processor: ProcessorMixin, image_token: str) -> str | None:
    """What the processor's chat template writes for an image part that comes before a text
    part: the difference between one user turn with and without the image, from the point
    where they part to the text; None without a template, or where the difference does not
    hold the image token exactly once."""
    if getattr(processor, "chat_template", None) is None:
        return None
    text = {"type": "text", "text": _SENTINEL}
    try:
        with_image, without = (
            processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=False, tokenize=False
            )
            for content in ([{"type": "image"}, text], [text])
        )
    except Exception:  # noqa: BLE001 - a template that cannot render this turn has no answer
        return None
    start = len(os.path.commonprefix([with_image, without]))
    end = with_image.find(_SENTINEL, start)
    inserted = with_image[start:end] if end >= 0 else ""
    return inserted if inserted.count(image_token) == 1 else None


def image_token_of(name: str, processor: ProcessorMixin) -> str:
    """The processor's image placeholder token, which its tokenizer must know as one token."""
    image_token = getattr(processor, "image_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_token is None or tokenizer is None or image_token not in tokenizer.get_vocab():
        raise NoImageTokenError(
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


def latent_attention_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A tiny DeepSeek-style latent attention's text-config keys (Mistral 4's, Mistral Large 4's,
    Kimi K2.5's): low-rank keys and values expanded to every head, rope and no-rope halves of
    the query/key heads."""
    return {
        "num_key_value_heads": spec["num_attention_heads"],
        "kv_lora_rank": spec["hidden_size"] // 4,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": spec["hidden_size"] // spec["num_attention_heads"],
    }


def routed_experts_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A tiny DeepSeek-style mixture of experts' text-config keys: one dense layer, then layers
    of 4 experts, 2 per token (real ones are mostly or all MoE; both kinds get tested)."""
    return {
        "first_k_dense_replace": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": spec["intermediate_size"] // 2,
    }


def merger_vit_config(spec: Mapping[str, Any], patch_size: int, merge_size: int) -> dict:
    """A tiny Qwen2-VL-style ViT's config (Qwen2.5-VL's, Qwen3-VL's, GLM-4.1V's, ...): the real
    patch size, patches merged ``merge_size`` x ``merge_size``, the merger feeding the decoder."""
    vision = spec["vision_hidden_size"]
    return {
        "depth": spec["vision_layers"],
        "hidden_size": vision,
        "intermediate_size": 2 * vision,
        "num_heads": spec["vision_attention_heads"],
        "out_hidden_size": spec["hidden_size"],
        "patch_size": patch_size,
        "spatial_merge_size": merge_size,
    }


def sam_config(
    spec: Mapping[str, Any],
    image_size: int,
    patch_size: int,
    window_size: int,
    global_attn_indexes: list[int],
) -> dict[str, Any]:
    """A tiny SAM ViT tower's config (GOT-OCR2's, DeepSeek-VL-Hybrid's, DeepSeek-OCR's):
    windowed attention but in ``global_attn_indexes``; families add their neck's channels."""
    vision = spec["vision_hidden_size"]
    return {
        "hidden_size": vision,
        "mlp_dim": 2 * vision,
        "num_hidden_layers": spec["vision_layers"],
        "num_attention_heads": spec["vision_attention_heads"],
        "image_size": image_size,
        "patch_size": patch_size,
        "window_size": window_size,
        "global_attn_indexes": global_attn_indexes,
        # the config's default (1e-10) leaves a random SAM blind to the image
        "initializer_range": 0.02,
    }


def siglip_config(spec: Mapping[str, Any], image_size: int, patch_size: int) -> dict:
    """A tiny SigLIP tower's config (no pooling head: the decoder reads its patch features)."""
    return {
        "model_type": "siglip_vision_model",
        **vision_config_kwargs(spec),
        "image_size": image_size,
        "patch_size": patch_size,
        "vision_use_head": False,
    }
