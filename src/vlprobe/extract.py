"""Extraction: pool every layer's hidden states of a model over a table of (image, prompt) samples.

Pooling happens inside the forward pass. A forward-pre-hook on decoder layer ``i`` sees hidden
state ``i`` (its input) and a forward hook on the final norm sees hidden state ``num_layers``;
each hook reduces its [batch, tokens, hidden] tensor to [batch, hidden] at once, so token-level
hidden states of all layers never exist together. Hidden-state indices are those of
``output_hidden_states=True``: 0 is the decoder input (image features scattered in), the last
is the output of the final norm.

Image prefix reuse. The prompts of one image share a prefix: the image block and whatever text
all of them start with. For models whose adapter allows it (decoders causal over image tokens), the
prefixes of a batch of images run once, keeping their KV cache, and then every prompt's remaining
tokens run on a copy of that cache. Each pass reduces its own tokens (sums, maxima, first or last
token), and the parts are combined exactly: mean = (prefix sum + suffix sum) / (prefix tokens +
suffix tokens), max = the larger of both maxima, first = the prefix's first token, last = the
suffix's last token. Other models, and images whose prompts cannot share a prefix, take the plain
path: each batch of (image, prompt) pairs in one forward pass.

Resumable jobs. Samples are processed in chunks of whole images; each finished chunk is written
(atomically, then a marker) into a chunk directory keyed by a fingerprint of everything that
determines its values. A re-run after a kill computes only the missing chunks; the output files
are assembled from the chunks at the end and the chunk directory is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm
from transformers import BatchFeature

from vlprobe.baselines import load_blank_image
from vlprobe.models import LoadedVLM, load_model
from vlprobe.models.base import PrefixBatch
from vlprobe.storage import atomic_path, shard_path, write_activations, write_text

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("sample_id", "image_path", "text")
CHUNK_SAMPLES = 256  # samples per resumable chunk (whole images, so a chunk may hold a few more)
CHUNK_FORMAT = 1  # bump when the chunk files change meaning


@dataclass(frozen=True)
class TokenMask:
    """Which positions of a padded batch hold tokens, and where each sequence starts and ends;
    which of them hold image features; and, per ``index:N`` pooling, the (row, position) pairs
    whose hidden states it gathers."""

    mask: torch.Tensor  # [batch, seq] bool
    first: torch.Tensor  # [batch] index of the first token
    last: torch.Tensor  # [batch] index of the last token
    count: torch.Tensor  # [batch, 1] float32 number of tokens
    rows: torch.Tensor  # [batch] arange, for gathering one position per row
    image: torch.Tensor  # [batch, seq] bool: tokens that hold image features
    picks: Mapping[int, tuple[torch.Tensor, torch.Tensor]]  # N -> (rows, positions)

    @classmethod
    def from_attention_mask(
        cls,
        attention_mask: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        picks: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> TokenMask:
        mask = attention_mask.bool()
        as_int = mask.int()
        # argmax returns the first maximal index: the first token, or (flipped) the last one;
        # this holds for left and right padding alike
        first = as_int.argmax(dim=1)
        last = mask.shape[1] - 1 - as_int.flip(dims=[1]).argmax(dim=1)
        count = as_int.sum(dim=1, keepdim=True).float()
        rows = torch.arange(mask.shape[0], device=mask.device)
        image = torch.zeros_like(mask) if image_mask is None else mask & image_mask.bool()
        return cls(mask, first, last, count, rows, image, dict(picks or {}))

    def counts(self) -> dict[str, torch.Tensor]:
        """Tokens per row [batch, 1] float32: all of them, image ones, text ones."""
        image = self.image.sum(dim=1, keepdim=True).float()
        return {"all": self.count, "image": image, "text": self.count - image}


def index_positions(index: int, lengths: torch.Tensor, model_name: str) -> torch.Tensor:
    """Position of token ``index`` (negative: counted from the end) in sequences of ``lengths``
    tokens of model ``model_name``; an index outside a sequence is an error."""
    positions = lengths + index if index < 0 else torch.full_like(lengths, index)
    if ((positions < 0) | (positions >= lengths)).any():
        raise ValueError(
            f"{model_name!r}: pooling index:{index} is outside a sequence of "
            f"{int(lengths.min())} tokens"
        )
    return positions


def _masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # float32 before summing: half-precision sums over hundreds of tokens overflow; `where`
    # rather than multiplying by the mask, so that non-finite values at padding cannot leak in
    return torch.where(mask[..., None], hidden.float(), 0.0).sum(dim=1)


def _reduce_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.mask)


def _reduce_image_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.image)


def _reduce_text_sum(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return _masked_sum(hidden, tokens.mask & ~tokens.image)


def _reduce_max(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden.masked_fill(~tokens.mask[..., None], float("-inf")).amax(dim=1).float()


def _reduce_first(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.first].float()


def _reduce_last(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.last].float()


# what a hook computes from one hidden state [batch, tokens, hidden] -> [batch, hidden]
REDUCTIONS: dict[str, Callable[[torch.Tensor, TokenMask], torch.Tensor]] = {
    "sum": _reduce_sum,
    "image_sum": _reduce_image_sum,
    "text_sum": _reduce_text_sum,
    "max": _reduce_max,
    "first": _reduce_first,
    "last": _reduce_last,
}


def reduce_hidden(name: str, hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    """Reduction ``name`` of one hidden state; ``index:N`` gathers ``tokens.picks[N]``
    ([picks, hidden], one per sequence that takes token N from this pass)."""
    if name.startswith("index:"):
        rows, positions = tokens.picks[int(name.removeprefix("index:"))]
        return hidden[rows, positions].float()
    return REDUCTIONS[name](hidden, tokens)


@dataclass(frozen=True)
class Pooling:
    """A pooling strategy: its definition (recorded in the output metadata), the reductions it
    needs over a whole sequence, over an image prefix and over a prompt suffix, and the token
    count ("all", "image", "text") that divides its sums (None: not a mean)."""

    definition: str
    whole: str
    prefix: str | None
    suffix: str | None
    count: str | None = None
    index: int | None = None  # N of index:N


POOLINGS: dict[str, Pooling] = {
    "last": Pooling("hidden state of the last non-padding token", "last", None, "last"),
    "mean": Pooling(
        "mean over all non-padding tokens (image and text)", "sum", "sum", "sum", count="all"
    ),
    "max": Pooling(
        "element-wise maximum over all non-padding tokens (image and text)", "max", "max", "max"
    ),
    "first": Pooling("hidden state of the first non-padding token", "first", "first", None),
    "image_mean": Pooling(
        "mean over the image tokens (the positions that the image features fill)",
        "image_sum",
        "image_sum",
        "image_sum",
        count="image",
    ),
    "text_mean": Pooling(
        "mean over the non-image, non-padding tokens (prompt text and special tokens)",
        "text_sum",
        "text_sum",
        "text_sum",
        count="text",
    ),
}
INDEX_POOLING = re.compile(r"index:(-?\d+)")


def pooling_of(name: str) -> Pooling:
    """The pooling called ``name``: one of :data:`POOLINGS`, or ``index:N``."""
    if name in POOLINGS:
        return POOLINGS[name]
    match = INDEX_POOLING.fullmatch(name)
    if match is None:
        raise KeyError(name)
    index = int(match.group(1))
    reduction = f"index:{index}"
    return Pooling(
        f"hidden state of the token at position {index} of the unpadded sequence "
        "(negative: counted from the end, -1 is the last token)",
        reduction,
        reduction,
        reduction,
        index=index,
    )


def check_poolings(poolings: Sequence[str]) -> None:
    unknown = [
        name for name in poolings if name not in POOLINGS and not INDEX_POOLING.fullmatch(name)
    ]
    if unknown or not poolings:
        raise ValueError(
            f"poolings {list(poolings)}: each must be one of {list(POOLINGS)} or index:N"
        )


def pool_whole(
    poolings: Sequence[str], reduced: Mapping[str, torch.Tensor], counts: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pooled values [batch, states, hidden] from reductions over whole sequences."""
    pooled = {}
    for name in poolings:
        pooling = pooling_of(name)
        values = reduced[pooling.whole]
        if pooling.count is not None:
            values = values / counts[pooling.count][:, :, None]
        pooled[name] = values
    return pooled


def pool_parts(
    poolings: Sequence[str],
    prefix: Mapping[str, torch.Tensor],
    prefix_counts: Mapping[str, torch.Tensor],
    suffix: Mapping[str, torch.Tensor],
    suffix_counts: Mapping[str, torch.Tensor],
    from_prefix: Mapping[int, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Pooled values of sequences made of a prefix followed by a suffix.

    ``prefix`` and ``suffix`` hold reductions [batch, states, hidden] over the tokens of each
    part, row ``k`` of both belonging to sequence ``k``; counts are [batch, 1] token numbers;
    ``from_prefix[N]`` [batch] tells whether token N of a sequence is in its prefix.
    """
    pooled = {}
    for name in poolings:
        pooling = pooling_of(name)
        if name == "last":
            pooled[name] = suffix["last"]
        elif name == "first":
            pooled[name] = prefix["first"]
        elif name == "max":
            pooled[name] = torch.maximum(prefix["max"], suffix["max"])
        elif pooling.count is not None:  # means: sums and counts of both parts
            total = prefix_counts[pooling.count] + suffix_counts[pooling.count]
            pooled[name] = (prefix[pooling.prefix] + suffix[pooling.suffix]) / total[:, :, None]
        else:  # index:N, from whichever part holds token N
            in_prefix = from_prefix[pooling.index][:, None, None]
            pooled[name] = torch.where(in_prefix, prefix[pooling.prefix], suffix[pooling.suffix])
    return pooled


class LayerPooler:
    """Hooks on a model's decoder that reduce the chosen hidden states during a forward pass.

    Use as a context manager (the hooks are removed on exit); :meth:`reduce` runs one forward
    pass with the hooks active and :meth:`pool` pools one plain batch.
    """

    def __init__(
        self, model: LoadedVLM, poolings: Sequence[str], hidden_states: Sequence[int]
    ) -> None:
        check_poolings(poolings)
        n_states = model.num_layers + 1
        if not hidden_states or any(not 0 <= i < n_states for i in hidden_states):
            raise ValueError(
                f"hidden states {list(hidden_states)}: {model.name!r} has indices 0..{n_states - 1}"
            )
        self.model = model
        self.poolings = list(poolings)
        self.hidden_states = list(hidden_states)
        # the N of the index:N poolings
        self.indices = sorted({i for name in poolings if (i := pooling_of(name).index) is not None})
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tokens: TokenMask | None = None
        self._reductions: list[str] = []
        self._reduced: dict[str, torch.Tensor] = {}
        self._seen: list[bool] = []

    def __enter__(self) -> LayerPooler:
        for slot, index in enumerate(self.hidden_states):
            if index < self.model.num_layers:
                handle = self.model.decoder_layers[index].register_forward_pre_hook(
                    self._layer_input_hook(slot), with_kwargs=True
                )
            else:
                handle = self.model.final_norm.register_forward_hook(self._norm_output_hook(slot))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _layer_input_hook(self, slot: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self._record(slot, args[0] if args else kwargs["hidden_states"])

        return hook

    def _norm_output_hook(self, slot: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._record(slot, output)

        return hook

    def _record(self, slot: int, hidden: torch.Tensor) -> None:
        if self._tokens is None:
            return  # a forward pass outside reduce(): not ours to record
        if self._seen[slot]:
            raise RuntimeError(
                f"{self.model.name!r}: hidden state {self.hidden_states[slot]} was computed twice "
                "in one forward pass; this model's decoder does not fit the layer hooks"
            )
        if hidden.shape[:2] != self._tokens.mask.shape:
            raise RuntimeError(
                f"{self.model.name!r}: hidden state {self.hidden_states[slot]} has shape "
                f"{tuple(hidden.shape)}; expected (batch, tokens) "
                f"{tuple(self._tokens.mask.shape)} first"
            )
        self._seen[slot] = True
        for name in self._reductions:
            values = reduce_hidden(name, hidden, self._tokens)
            if name not in self._reduced:  # [rows of this reduction, states, hidden]
                self._reduced[name] = values.new_empty(
                    (values.shape[0], len(self.hidden_states), values.shape[1])
                )
            self._reduced[name][:, slot] = values

    def reduce(
        self, run: Callable[[], object], tokens: TokenMask, reductions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Call ``run`` (one forward pass) and reduce the tokens that ``tokens`` marks in each
        hidden state it computes.

        Returns, per reduction, a float32 tensor [rows, len(hidden_states), hidden] on the
        model's device: one row per sequence, or per pick for ``index:N``.
        """
        self._reductions = sorted(set(reductions))
        self._reduced = {}
        self._seen = [False] * len(self.hidden_states)
        self._tokens = tokens
        try:
            with torch.inference_mode():
                run()
        finally:
            self._tokens = None
        missing = [i for i, seen in zip(self.hidden_states, self._seen, strict=True) if not seen]
        if missing:
            raise RuntimeError(f"{self.model.name!r}: hidden states {missing} were never computed")
        return self._reduced

    def pool(self, inputs: BatchFeature) -> dict[str, torch.Tensor]:
        """Pool one plain batch; per pooling a float32 CPU tensor [batch, states, hidden]."""
        mask = inputs["attention_mask"]
        tokens = TokenMask.from_attention_mask(mask, self.model.image_token_mask(inputs))
        lengths = tokens.count[:, 0].long()
        picks = {  # token N of each row: the rows' tokens are contiguous (left or right padding)
            index: (tokens.rows, tokens.first + index_positions(index, lengths, self.model.name))
            for index in self.indices
        }
        tokens = replace(tokens, picks=picks)
        reduced = self.reduce(
            lambda: self.model.forward(inputs),
            tokens,
            [pooling_of(name).whole for name in self.poolings],
        )
        pooled = pool_whole(self.poolings, reduced, tokens.counts())
        return {k: v.cpu() for k, v in pooled.items()}


def load_image(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def batch_order(samples: pl.DataFrame) -> np.ndarray:
    """Row order that batches images of one size together (little padding), then one image's
    prompts together, then prompts of similar length."""
    sizes: dict[str, tuple[int, int]] = {}
    for path in samples["image_path"].unique():
        with Image.open(path) as image:  # reads the header only
            sizes[path] = image.size
    keys = samples.select(
        "image_path",
        width=pl.col("image_path").replace_strict(
            {path: size[0] for path, size in sizes.items()}, return_dtype=pl.Int64
        ),
        height=pl.col("image_path").replace_strict(
            {path: size[1] for path, size in sizes.items()}, return_dtype=pl.Int64
        ),
        text_length=pl.col("text").str.len_chars(),
        row=pl.int_range(pl.len()),
    )
    return keys.sort("width", "height", "image_path", "text_length", "row")["row"].to_numpy()


def plan_chunks(samples: pl.DataFrame, chunk_samples: int) -> list[np.ndarray]:
    """Rows of ``samples`` per chunk, in batch order: whole images, at least ``chunk_samples``
    samples per chunk (except the last)."""
    order = batch_order(samples)
    paths = samples["image_path"].to_list()
    chunks: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        image_ends = end == len(order) or paths[order[end]] != paths[order[end - 1]]
        if image_ends and (end - start >= chunk_samples or end == len(order)):
            chunks.append(order[start:end])
            start = end
    return chunks


@dataclass
class _Image:
    """One image of a chunk and its prompts; ``positions`` index the chunk's samples."""

    path: str
    texts: list[str]
    positions: list[int]


def _images_of(paths: Sequence[str], texts: Sequence[str]) -> list[_Image]:
    """Group consecutive samples of the same image."""
    images: list[_Image] = []
    for position, (path, text) in enumerate(zip(paths, texts, strict=True)):
        if not images or images[-1].path != path:
            images.append(_Image(path, [], []))
        images[-1].texts.append(text)
        images[-1].positions.append(position)
    return images


class Extractor:
    """Pools samples with a model: prefix reuse where the model allows it, else plain batches.

    ``batch_size`` is the number of images per prefix pass (prefix reuse) or of samples per
    plain pass; it is halved on CUDA out-of-memory and the batch retried. Suffix passes take as
    many prompts as give about the prefix pass's number of tokens. With ``prefetch`` (default:
    on CUDA), a worker thread decodes and processes the next prefix batch's images while the
    device computes the current one. Use as a context manager (hooks, worker thread).
    """

    def __init__(
        self,
        model: LoadedVLM,
        poolings: Sequence[str],
        hidden_states: Sequence[int],
        batch_size: int,
        prefix_reuse: bool | None = None,
        prefetch: bool | None = None,
        load: Callable[[str], Image.Image] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.poolings = list(poolings)
        self.hidden_states = list(hidden_states)
        self.batch_size = batch_size
        self.prefix_reuse = model.prefix_reuse if prefix_reuse is None else prefix_reuse
        self.prefetch = model.device.type == "cuda" if prefetch is None else prefetch
        self.pooler = LayerPooler(model, poolings, hidden_states)
        self.load = load or load_image  # the blank-image baseline swaps in its own
        self.plain_images = 0  # images that took the plain path although reuse was on
        self._worker: ThreadPoolExecutor | None = None
        self._round = 0  # calls of pool(), so that a batch prepared ahead is never misplaced
        # the prefix batch being prepared ahead: (round, start, end) and its future
        self._pending: tuple[tuple[int, int, int], Future] | None = None

    def __enter__(self) -> Extractor:
        self.pooler.__enter__()
        if self.prefetch and self.prefix_reuse:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlprobe-prefetch")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.pooler.__exit__(*exc_info)
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker, self._pending = None, None

    def pool(self, paths: Sequence[str], texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Pool samples (consecutive samples of one image together); per pooling a float32
        array [len(hidden_states), samples, hidden]."""
        shape = (len(self.hidden_states), len(paths), self.model.hidden_size)
        out = {name: np.empty(shape, dtype=np.float32) for name in self.poolings}
        images = _images_of(paths, texts)
        self._round += 1
        with torch.inference_mode():
            if self.prefix_reuse:
                self._batched(len(images), lambda a, b: self._pool_prefixed(images, a, b, out))
            else:
                self._pool_plain(images, out)
        return out

    def _batched(self, n_units: int, run: Callable[[int, int], None]) -> None:
        """Run units [start, end) in batches of ``batch_size``, halving it on out-of-memory."""
        start = 0
        while start < n_units:
            end = min(start + self.batch_size, n_units)
            try:
                run(start, end)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size //= 2
                log.warning(
                    "%s: CUDA out of memory: batch size halved to %d",
                    self.model.name,
                    self.batch_size,
                )
                torch.cuda.empty_cache()
                continue
            start = end

    @staticmethod
    def _store(out: dict[str, np.ndarray], positions: Sequence[int], pooled: Mapping) -> None:
        for name, values in pooled.items():
            out[name][:, positions] = values.transpose(0, 1).cpu().numpy()

    def _pool_plain(self, images: Sequence[_Image], out: dict[str, np.ndarray]) -> None:
        loaded: dict[str, Image.Image] = {}
        samples = [
            (image.path, text, position)
            for image in images
            for text, position in zip(image.texts, image.positions, strict=True)
        ]

        def run(start: int, end: int) -> None:
            batch = samples[start:end]
            pictures = []
            for path, _, _ in batch:
                if path not in loaded:
                    loaded.clear()  # samples of one image are consecutive
                    loaded[path] = self.load(path)
                pictures.append(loaded[path])
            pooled = self.pooler.pool(self.model.inputs(pictures, [text for _, text, _ in batch]))
            self._store(out, [position for _, _, position in batch], pooled)

        self._batched(len(samples), run)

    def _prepare(self, images: Sequence[_Image]) -> PrefixBatch | None:
        """CPU work of a prefix batch: decode the images, run the processor, tokenise."""
        return self.model.prefix_batch(
            [self.load(image.path) for image in images], [image.texts for image in images]
        )

    def _prepared(self, images: Sequence[_Image], start: int, end: int) -> PrefixBatch | None:
        """The prefix batch of ``images[start:end]``: prepared ahead if it was, else now."""
        pending, self._pending = self._pending, None
        if pending is not None:
            key, future = pending
            if key == (self._round, start, end):
                return future.result()
            wait([future])  # prepared for another batch size: dropped
        return self._prepare(images[start:end])

    def _prepare_next(self, images: Sequence[_Image], start: int) -> None:
        """Prepare the next prefix batch in the worker thread while the device runs this one."""
        if self._worker is None or start >= len(images):
            return
        end = min(start + self.batch_size, len(images))
        future = self._worker.submit(self._prepare, images[start:end])
        self._pending = ((self._round, start, end), future)

    def _pool_prefixed(
        self, images: Sequence[_Image], start: int, end: int, out: dict[str, np.ndarray]
    ) -> None:
        model = self.model
        prefix = self._prepared(images, start, end)
        self._prepare_next(images, end)
        images = images[start:end]
        if prefix is None:
            if self._pending is not None:  # the processor is not for two threads at once
                wait([self._pending[1]])
            self.plain_images += len(images)
            self._pool_plain(images, out)
            return
        cache = model.new_cache()
        extra = {} if prefix.position_ids is None else {"position_ids": prefix.position_ids}
        prefix_mask = prefix.attention_mask
        suffixes = [
            (row, ids, position)
            for row, image in enumerate(images)
            for ids, position in zip(prefix.suffixes[row], image.positions, strict=True)
        ]
        # token N of every prompt, by its position in the whole sequence: the prefix pass
        # gathers it for the prompts whose prefix holds it (the others' picks are clamped into
        # the prefix and dropped in pool_parts)
        prefix_lengths = prefix_mask.sum(dim=1)
        item_rows = torch.tensor([row for row, _, _ in suffixes], device=model.device)
        item_prefix = prefix_lengths[item_rows]
        item_lengths = item_prefix + torch.tensor(
            [len(ids) for _, ids, _ in suffixes], device=model.device
        )
        positions = {
            index: index_positions(index, item_lengths, model.name) for index in self.pooler.indices
        }
        width = prefix_mask.shape[1]  # prefixes are left-padded
        tokens = TokenMask.from_attention_mask(
            prefix_mask,
            model.image_token_mask(prefix.inputs),
            {
                index: (item_rows, width - item_prefix + torch.minimum(at, item_prefix - 1))
                for index, at in positions.items()
            },
        )
        prefix_reduced = self.pooler.reduce(
            lambda: model.forward_cached(prefix.inputs, cache, **extra),
            tokens,
            [r for name in self.poolings if (r := pooling_of(name).prefix) is not None],
        )
        prefix_part = _PrefixPart(prefix, cache, prefix_reduced, tokens.counts(), positions)
        # suffix passes of about as many tokens as the prefix pass
        longest = max(len(ids) for _, ids, _ in suffixes)
        per_pass = max(self.batch_size, self.batch_size * width // longest)
        for start in range(0, len(suffixes), per_pass):
            items = torch.arange(start, min(start + per_pass, len(suffixes)), device=model.device)
            self._pool_suffixes(prefix_part, items, suffixes[start : start + per_pass], out)

    def _pool_suffixes(
        self,
        prefix: _PrefixPart,
        items: torch.Tensor,
        suffixes: Sequence[tuple[int, list[int], int]],
        out: dict[str, np.ndarray],
    ) -> None:
        """Pool prompts ``items`` of a prefix batch: their suffixes in one pass on the cache."""
        model = self.model
        rows = torch.tensor([row for row, _, _ in suffixes], device=model.device)
        inputs, suffix_mask = model.suffix_inputs(
            prefix.batch, rows, [ids for _, ids, _ in suffixes]
        )
        suffix_cache = model.cache_rows(prefix.cache, rows)
        prefix_lengths = prefix.counts["all"][rows, 0].long()
        # no image tokens here: prefix_batch keeps them all in the prefix
        tokens = TokenMask.from_attention_mask(
            suffix_mask,
            picks={
                index: (
                    torch.arange(len(suffixes), device=model.device),
                    (at[items] - prefix_lengths).clamp(min=0),
                )
                for index, at in prefix.positions.items()
            },
        )
        suffix_reduced = self.pooler.reduce(
            lambda: model.forward_cached(inputs, suffix_cache),
            tokens,
            [r for name in self.poolings if (r := pooling_of(name).suffix) is not None],
        )
        # the prefix's reductions of each suffix's own prefix (index:N ones are per prompt)
        prefix_reduced = {
            name: values[items if name.startswith("index:") else rows]
            for name, values in prefix.reduced.items()
        }
        pooled = pool_parts(
            self.poolings,
            prefix_reduced,
            {name: count[rows] for name, count in prefix.counts.items()},
            suffix_reduced,
            tokens.counts(),
            {index: at[items] < prefix_lengths for index, at in prefix.positions.items()},
        )
        self._store(out, [position for _, _, position in suffixes], pooled)


@dataclass
class _PrefixPart:
    """A prefix batch after its forward pass: the KV cache, the reductions and token counts of
    its rows, and per ``index:N`` pooling the position of token N in each prompt."""

    batch: PrefixBatch
    cache: Any
    reduced: Mapping[str, torch.Tensor]
    counts: Mapping[str, torch.Tensor]
    positions: Mapping[int, torch.Tensor]


def pool_samples(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    hidden_states: Sequence[int],
    batch_size: int,
    prefix_reuse: bool | None = None,
    prefetch: bool | None = None,
) -> dict[str, np.ndarray]:
    """Pool all samples in memory (no chunks); per pooling [samples, states, hidden] float32
    in the order of ``samples``."""
    order = batch_order(samples)
    paths, texts = samples["image_path"].to_list(), samples["text"].to_list()
    with Extractor(model, poolings, hidden_states, batch_size, prefix_reuse, prefetch) as extractor:
        pooled = extractor.pool([paths[i] for i in order], [texts[i] for i in order])
    result = {}
    for name, values in pooled.items():
        result[name] = np.empty_like(values.transpose(1, 0, 2))
        result[name][order] = values.transpose(1, 0, 2)
    return result


# ----------------------------------------------------------------------------- resumable chunks


class ChunkStore:
    """Finished chunks of one extraction, in ``<root>/<fingerprint>/``.

    Chunk ``k`` is ``chunk-k.rows.npy`` (positions in the samples table), one
    ``chunk-k.<pooling>.npy`` [states, samples, hidden] float32 per pooling, each written
    atomically, and last the marker ``chunk-k.done``: only marked chunks count. Opening the
    store removes chunks of other fingerprints (stale: another model, samples or poolings).
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str) -> None:
        self.root = Path(root)
        self.dir = self.root / fingerprint

    def open(self) -> ChunkStore:
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale != self.dir:
                    log.info("removing stale chunks %s", stale)
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    else:
                        stale.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        return self

    def _file(self, index: int, part: str) -> Path:
        return self.dir / f"chunk-{index:05d}.{part}"

    def is_done(self, index: int) -> bool:
        return self._file(index, "done").is_file()

    def write(self, index: int, rows: np.ndarray, pooled: Mapping[str, np.ndarray]) -> None:
        for part, values in [("rows", rows), *pooled.items()]:
            with atomic_path(self._file(index, f"{part}.npy")) as tmp, open(tmp, "wb") as handle:
                np.save(handle, values)
        write_text(json.dumps({"samples": len(rows)}), self._file(index, "done"))

    def rows(self, index: int) -> np.ndarray:
        return np.load(self._file(index, "rows.npy"))

    def values(self, index: int, pooling: str, slots: slice) -> np.ndarray:
        """Pooled values of a chunk for a range of state slots: [samples, slots, hidden]."""
        values = np.load(self._file(index, f"{pooling}.npy"), mmap_mode="r")
        return np.asarray(values[slots]).transpose(1, 0, 2)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _model_source(model: LoadedVLM) -> dict[str, Any]:
    """What identifies the loaded weights: the checkpoint's name or directory and revision,
    and for a local directory the size and modification time of its files."""
    config = model.model.config
    source: dict[str, Any] = {
        "name_or_path": str(getattr(config, "_name_or_path", "")),
        "commit": getattr(config, "_commit_hash", None),
        "dtype": str(model.model.dtype),
        "class": type(model.model).__name__,
    }
    directory = Path(source["name_or_path"])
    if source["name_or_path"] and directory.is_dir():
        source["files"] = sorted(
            (str(path.relative_to(directory)), path.stat().st_size, path.stat().st_mtime_ns)
            for path in directory.rglob("*")
            if path.is_file()
        )
    return source


def chunk_fingerprint(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    hidden_states: Sequence[int],
    chunk_samples: int,
    key: Mapping[str, Any],
) -> str:
    """A hash of everything that determines the chunks' values: model (``key``, e.g. its config
    entry, and its weights' source), samples (ids, image files with size and mtime, texts),
    poolings, hidden states, chunk size and the chunk format."""
    digest = hashlib.sha256()
    header = {
        "format": CHUNK_FORMAT,
        "model": model.name,
        "source": _model_source(model),
        "prefix_reuse": model.prefix_reuse,
        "key": key,
        "poolings": list(poolings),
        "hidden_states": list(hidden_states),
        "chunk_samples": chunk_samples,
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for sample_id, path, text in samples.select(SAMPLE_COLUMNS).iter_rows():
        digest.update(json.dumps([sample_id, path, text]).encode())
    for path in sorted(samples["image_path"].unique().to_list()):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def extract_activations(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_paths: Sequence[str | os.PathLike],
    metadata: Mapping[str, Any],
    batch_size: int,
    *,
    chunk_dir: str | os.PathLike | None = None,
    chunk_samples: int = CHUNK_SAMPLES,
    resume_key: Mapping[str, Any] | None = None,
    prefix_reuse: bool | None = None,
    prefetch: bool | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    load: Callable[[str], Image.Image] | None = None,
) -> None:
    """Pool the hidden states of ``samples`` (sample_id, image_path, text) and write them.

    ``shards`` are inclusive (first, last) hidden-state ranges, written to ``out_paths`` (one
    per shard) as activation tables in the order of ``samples``; ``metadata`` is recorded in
    each, with the pooling definitions added.

    Work is done in chunks of about ``chunk_samples`` samples (whole images), kept in
    ``chunk_dir`` (default: a temporary directory, i.e. no resuming) under a fingerprint of
    model, samples, poolings, shards, ``metadata`` and ``resume_key``; a call after an
    interrupted one computes only the chunks that are missing there. The chunk directory is
    removed once every output is written. ``prefix_reuse`` overrides the adapter's setting
    (False forces the plain path); ``prefetch`` prepares the next batch's inputs in a thread
    while the device computes (default: on CUDA). ``on_chunk(index, n_chunks)`` is called
    after each chunk computed in this call.
    """
    check_poolings(poolings)
    missing = [column for column in SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise ValueError(f"samples lack columns {missing}; expected {list(SAMPLE_COLUMNS)}")
    if len(out_paths) != len(shards):
        raise ValueError(f"{len(shards)} shards but {len(out_paths)} output paths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    extractor = Extractor(
        model, poolings, hidden_states, batch_size, prefix_reuse, prefetch, load=load
    )

    plan = plan_chunks(samples, chunk_samples)
    key = {
        "metadata": dict(metadata),
        "resume_key": dict(resume_key or {}),
        "shards": shards,
        "prefix_reuse": prefix_reuse,
    }
    fingerprint = chunk_fingerprint(model, samples, poolings, hidden_states, chunk_samples, key)
    with _chunk_root(chunk_dir, out_paths) as root:
        store = ChunkStore(root, fingerprint).open()
        _compute_chunks(extractor, samples, plan, store, on_chunk)
        _write_shards(model, samples, poolings, shards, out_paths, metadata, plan, store)
        store.remove()


@contextlib.contextmanager
def _chunk_root(chunk_dir: str | os.PathLike | None, out_paths: Sequence) -> Iterator[Path]:
    """The chunk directory given, or a temporary one beside the first output (removed)."""
    if chunk_dir is not None:
        yield Path(chunk_dir)
        return
    parent = Path(out_paths[0]).parent if out_paths else Path()
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".chunks-", dir=parent)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compute_chunks(
    extractor: Extractor,
    samples: pl.DataFrame,
    plan: Sequence[np.ndarray],
    store: ChunkStore,
    on_chunk: Callable[[int, int], None] | None,
) -> None:
    model = extractor.model
    n_samples = samples.height
    todo = [index for index in range(len(plan)) if not store.is_done(index)]
    done_samples = n_samples - sum(len(plan[index]) for index in todo)
    paths, texts = samples["image_path"].to_list(), samples["text"].to_list()
    log.info(
        "%s: %d samples of %d images in %d chunks, %d hidden states, poolings %s, %s; chunks in %s",
        model.name,
        n_samples,
        len(set(paths)),
        len(plan),
        len(extractor.hidden_states),
        ",".join(extractor.poolings),
        "image prefix reuse" if extractor.prefix_reuse else "plain forward passes",
        store.dir,
    )
    if done_samples:
        log.info(
            "resuming: %d of %d chunks (%d samples) already done",
            len(plan) - len(todo),
            len(plan),
            done_samples,
        )
    started, computed = time.perf_counter(), 0
    with (
        extractor,
        tqdm(
            total=n_samples,
            initial=done_samples,
            unit="sample",
            desc=model.name,
            file=sys.stderr,
            mininterval=2.0,
            smoothing=0.1,
        ) as progress,
    ):
        for index in todo:
            rows = plan[index]
            pooled = extractor.pool([paths[i] for i in rows], [texts[i] for i in rows])
            store.write(index, rows, pooled)
            computed += len(rows)
            progress.update(len(rows))
            elapsed = time.perf_counter() - started
            rate = computed / elapsed if elapsed > 0 else float("nan")
            left = n_samples - done_samples - computed
            log.info(
                "chunk %d/%d: %d samples; %.2f samples/s; %d samples left, about %s",
                index + 1,
                len(plan),
                len(rows),
                rate,
                left,
                _duration(left / rate) if rate > 0 else "?",
            )
            if on_chunk is not None:
                on_chunk(index, len(plan))
    elapsed = time.perf_counter() - started
    if extractor.plain_images:
        log.warning("%d images took the plain path", extractor.plain_images)
    if computed:
        log.info(
            "%s: pooled %d samples in %.1f s (%.2f samples/s)",
            model.name,
            computed,
            elapsed,
            computed / elapsed if elapsed > 0 else float("nan"),
        )


def _write_shards(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_paths: Sequence[str | os.PathLike],
    metadata: Mapping[str, Any],
    plan: Sequence[np.ndarray],
    store: ChunkStore,
) -> None:
    """Assemble each shard's table from the chunks, one shard in memory at a time."""
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    slot_of = {index: slot for slot, index in enumerate(hidden_states)}
    shard_metadata = {
        **metadata,
        "poolings": {name: pooling_of(name).definition for name in poolings},
        "num_hidden_states": model.num_layers + 1,
    }
    sample_ids = samples["sample_id"].to_numpy()
    for (first, last), path in zip(shards, out_paths, strict=True):
        slots = slice(slot_of[first], slot_of[last] + 1)
        shape = (samples.height, last - first + 1, model.hidden_size)
        pooled = {name: np.empty(shape, dtype=np.float32) for name in poolings}
        for index, planned in enumerate(plan):
            rows = store.rows(index)
            if not np.array_equal(rows, planned):
                raise RuntimeError(f"{store.dir}: chunk {index} holds other samples than planned")
            for name in poolings:
                pooled[name][rows] = store.values(index, name, slots)
        write_activations(path, sample_ids, list(range(first, last + 1)), pooled, shard_metadata)


def chunk_dir_of(out_dir: str | os.PathLike) -> Path:
    """Where the chunks of an extraction job's output directory live: beside it, since a
    workflow manager deletes a job's outputs before the job starts."""
    out = Path(out_dir)
    return out.with_name(out.name + ".chunks")


def run_extraction(
    model_name: str,
    model_entry: Mapping[str, Any],
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_dir: str | os.PathLike,
    device: str = "cpu",  # cpu, cuda, cuda:N, or auto
    threads: int = 1,
    metadata: Mapping[str, Any] | None = None,
    chunk_samples: int = CHUNK_SAMPLES,
    on_chunk: Callable[[int, int], None] | None = None,
    batch_size: int | None = None,
) -> None:
    """One extraction job: load the model of a config entry, pool, write one file per shard.

    ``batch_size`` overrides the entry's (the workflow halves it on each retry); it does not
    change the pooled values, so chunks of an attempt with another batch size are reused.

    Finished chunks are kept in ``<out_dir>.chunks/`` (see :func:`chunk_dir_of`), so that a
    re-run after a kill resumes.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    model = load_model(model_name, model_entry, device=device)
    if batch_size is not None and batch_size != model_entry["batch_size"]:
        log.warning(
            "%s: batch size %d instead of the entry's %d (retry after a failed attempt)",
            model_name,
            batch_size,
            model_entry["batch_size"],
        )
    extract_activations(
        model,
        samples,
        poolings,
        shards,
        [shard_path(out_dir, shard) for shard in shards],
        {
            "model": model_name,
            "family": model_entry["family"],
            "hf_id": str(model_entry["hf_id"]),
            "revision": model_entry.get("revision"),
            "dtype": str(model.model.dtype).removeprefix("torch."),  # "auto" resolved
            **(metadata or {}),
        },
        batch_size or model_entry["batch_size"],
        chunk_dir=chunk_dir_of(out_dir),
        chunk_samples=chunk_samples,
        resume_key={"model_name": model_name, "entry": dict(model_entry), "device": device},
        on_chunk=on_chunk,
        load=load_blank_image if model_entry.get("baseline") == "blank_image" else None,
    )
