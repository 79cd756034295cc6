"""The extractor: a model's pooled hidden states over samples, and the extraction job."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from vlprobe.data import load_image
from vlprobe.extract.chunks import (
    CHUNK_SAMPLES,
    SAMPLE_COLUMNS,
    ChunkStore,
    chunk_fingerprint,
    chunk_root,
    plan_chunks,
)
from vlprobe.extract.pooling import (
    LayerPooler,
    Parts,
    TokenMask,
    check_poolings,
    index_positions,
    join_runs,
    pool_parts,
    pooling_of,
)
from vlprobe.models import LoadedVLM
from vlprobe.models.base import CachedRows, PrefixBatch
from vlprobe.storage import write_activations

log = logging.getLogger(__name__)


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


# a run of tokens that several prompts of an image start with gets its own pass when it saves
# at least this many tokens: shorter ones cost more in cache copies than they save
SHARED_RUN_MIN_TOKENS = 8


def shared_runs(suffixes: Sequence[Sequence[int]], min_tokens: int) -> list[tuple[int, list[int]]]:
    """Groups of ``suffixes`` (one image's prompts after its prefix) that start with the same
    run of tokens, as (run length, member indices): a run computed once for its group saves
    (members - 1) x length tokens, and the groups are chosen to save the most tokens, each
    run saving at least ``min_tokens``. A suffix may be its group's run alone."""
    order = sorted(range(len(suffixes)), key=lambda k: list(suffixes[k]))
    common = [  # tokens that neighbours in that order start with alike
        _common_length(suffixes[a], suffixes[b]) for a, b in itertools.pairwise(order)
    ]

    def best(start: int, end: int) -> tuple[int, list[tuple[int, list[int]]]]:
        # order[start:end] share common[start:end-1]'s minimum; either that run is their
        # group, or the runs where it is exceeded are groups of their own
        if end - start < 2:
            return 0, []
        length = min(common[start : end - 1])
        saved, groups, first = 0, [], start
        for k in range(start, end):
            if k == end - 1 or common[k] == length:
                part_saved, part_groups = best(first, k + 1)
                saved, groups, first = saved + part_saved, groups + part_groups, k + 1
        own = (end - start - 1) * length
        if length > 0 and own >= max(saved, min_tokens):
            return own, [(length, sorted(order[start:end]))]
        return saved, groups

    return best(0, len(order))[1]


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    for n, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return n
    return min(len(a), len(b))


class Extractor:
    """Pools samples with a model: prefix reuse where the model allows it, else plain batches.

    ``batch_size`` is the number of images per prefix pass (prefix reuse) or of samples per
    plain pass; it is halved on CUDA out-of-memory and the batch retried. Suffix passes take as
    many prompts as give about the prefix pass's number of tokens. Prompts of one image that
    start alike after the prefix (:func:`shared_runs`) pass their shared run once, then each
    its rest on that run's cache. With ``prefetch`` (default:
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
        # prompts, shortest first: a suffix pass then holds prompts of about one length (an
        # image's prompts come from several tasks, of 10 to 200 tokens), so little of it is
        # padding; a prompt's index in this order is its "item"
        prompts = sorted(
            (
                _Prompt(row, ids, position)
                for row, image in enumerate(images)
                for ids, position in zip(prefix.suffixes[row], image.positions, strict=True)
            ),
            key=lambda prompt: len(prompt.ids),
        )
        # token N of every prompt, by its position in the whole sequence: each pass gathers it
        # for the prompts whose tokens there hold it (the others' picks are clamped into the
        # pass and dropped when the runs are joined)
        prefix_lengths = prefix_mask.sum(dim=1)
        item_rows = torch.tensor([prompt.row for prompt in prompts], device=model.device)
        item_prefix = prefix_lengths[item_rows]
        item_lengths = item_prefix + torch.tensor(
            [len(prompt.ids) for prompt in prompts], device=model.device
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
        prefix_part = _PrefixPart(prefix_reduced, tokens.counts(), positions)
        images_level = _Level(
            cache, prefix.cached, torch.arange(len(images), device=model.device), prefix_lengths
        )
        # passes of about as many tokens as the prefix pass (at least batch_size sequences)
        budget = self.batch_size * width
        alone, shared = [], []
        for row in range(len(images)):
            items = [item for item, prompt in enumerate(prompts) if prompt.row == row]
            groups = shared_runs([prompts[item].ids for item in items], SHARED_RUN_MIN_TOKENS)
            grouped = {item for _, members in groups for item in members}
            alone += [item for k, item in enumerate(items) if k not in grouped]
            shared += [(row, length, [items[k] for k in members]) for length, members in groups]
        alone.sort()  # items are in order of length
        for run in self._budgeted([len(prompts[item].ids) for item in alone], budget):
            entries = [(prompts[alone[k]].row, alone[k]) for k in run]
            self._pool_suffixes(prefix_part, images_level, entries, prompts, out)
        shared.sort(key=lambda group: group[1])
        # the rest of a prompt continues its run, so a run pass has no padding: padding between
        # a run and its rest would enter the recurrent state of a linear-attention layer and
        # a sliding window's span
        for run in self._budgeted([length for _, length, _ in shared], budget, padded=False):
            groups = [shared[k] for k in run]
            level = self._pool_shared_runs(prefix_part, images_level, groups, prompts, out)
            # the rest of each prompt that has one, after its group's shared run
            rest = sorted(
                (
                    (slot, item)
                    for slot, (_, length, members) in enumerate(groups)
                    for item in members
                    if len(prompts[item].ids) > length
                ),
                key=lambda entry: len(prompts[entry[1]].ids),
            )
            for rest_run in self._budgeted([len(prompts[item].ids) for _, item in rest], budget):
                entries = [rest[k] for k in rest_run]
                self._pool_suffixes(prefix_part, level, entries, prompts, out)

    def _budgeted(
        self, lengths: Sequence[int], budget: int, padded: bool = True
    ) -> Iterator[range]:
        """Consecutive runs of sequences of ``lengths`` (ascending) for one pass each: at
        least ``batch_size`` of them, more while the padded pass holds at most ``budget``
        tokens; all of one length unless ``padded``."""
        start = 0
        while start < len(lengths):
            end = start + 1
            while (
                end < len(lengths)
                and (padded or lengths[end] == lengths[start])
                and (end - start < self.batch_size or (end + 1 - start) * lengths[end] <= budget)
            ):
                end += 1
            yield range(start, end)
            start = end

    def _pool_shared_runs(
        self,
        prefix: _PrefixPart,
        images: _Level,
        groups: Sequence[tuple[int, int, list[int]]],
        prompts: Sequence[_Prompt],
        out: dict[str, np.ndarray],
    ) -> _Level:
        """One pass over the runs of tokens that the prompts of each group (image row, run
        length, items) start with, on the images' cache; a prompt that is its group's run
        alone is pooled here. Returns the level that the rest of each prompt continues."""
        model = self.model
        rows = torch.tensor([row for row, _, _ in groups], device=model.device)
        runs = [prompts[members[0]].ids[:length] for _, length, members in groups]
        inputs, run_mask = model.suffix_inputs(images.cached, rows, runs)
        cache = model.cache_rows(images.cache, rows)
        members = torch.tensor([item for _, _, items in groups for item in items])
        slot_of_member = torch.tensor(
            [slot for slot, (_, _, items) in enumerate(groups) for _ in items]
        ).to(model.device)
        members = members.to(model.device)
        before = images.tokens_before[rows]
        tokens = TokenMask.from_attention_mask(
            run_mask,
            picks={
                index: (
                    slot_of_member,
                    (at[members] - before[slot_of_member]).clamp(min=0, max=run_mask.shape[1] - 1),
                )
                for index, at in prefix.positions.items()
            },
        )
        reduced = self.pooler.reduce(
            lambda: model.forward_cached(inputs, cache),
            tokens,
            [r for name in self.poolings if (r := pooling_of(name).suffix) is not None],
        )
        counts = tokens.counts()
        # index:N picks are per prompt: their row in `reduced` for every item of the batch
        pick_of_item = torch.full((len(prompts),), -1, dtype=torch.long, device=model.device)
        pick_of_item[members] = torch.arange(len(members), device=model.device)
        level = _Level(
            cache,
            images.cached.continued(rows, run_mask),
            rows,
            before + run_mask.sum(dim=1),
            _Runs(reduced, counts, pick_of_item, before),
        )
        whole = [
            (slot, item)
            for slot, (_, length, items) in enumerate(groups)
            for item in items
            if len(prompts[item].ids) == length
        ]
        if whole:
            slots = torch.tensor([slot for slot, _ in whole], device=model.device)
            items = torch.tensor([item for _, item in whole], device=model.device)
            suffix = level.runs.rows(slots, items)
            self._store_pooled(
                prefix,
                rows[slots],
                items,
                suffix,
                {n: c[slots] for n, c in counts.items()},
                [prompts[item].position for _, item in whole],
                out,
            )
        return level

    def _pool_suffixes(
        self,
        prefix: _PrefixPart,
        level: _Level,
        entries: Sequence[tuple[int, int]],
        prompts: Sequence[_Prompt],
        out: dict[str, np.ndarray],
    ) -> None:
        """Pool prompts in one pass over the rest of their tokens, each (level row, item) of
        ``entries`` continuing its row of ``level``'s cache."""
        model = self.model
        rows = torch.tensor([row for row, _ in entries], device=model.device)
        items = torch.tensor([item for _, item in entries], device=model.device)
        before = level.tokens_before[rows]
        cut = (before - prefix.counts["all"][level.image_rows[rows], 0].long()).tolist()
        inputs, suffix_mask = model.suffix_inputs(
            level.cached,
            rows,
            [prompts[item].ids[n:] for (_, item), n in zip(entries, cut, strict=True)],
        )
        suffix_cache = model.cache_rows(level.cache, rows)
        # no image tokens here: prefix_batch keeps them all in the prefix
        tokens = TokenMask.from_attention_mask(
            suffix_mask,
            picks={
                index: (
                    torch.arange(len(entries), device=model.device),
                    (at[items] - before).clamp(min=0),
                )
                for index, at in prefix.positions.items()
            },
        )
        suffix = self.pooler.reduce(
            lambda: model.forward_cached(inputs, suffix_cache),
            tokens,
            [r for name in self.poolings if (r := pooling_of(name).suffix) is not None],
        )
        counts = tokens.counts()
        if level.runs is not None:  # the shared run before the rest
            head = level.runs.rows(rows, items)
            head_counts = {name: c[rows] for name, c in level.runs.counts.items()}
            suffix, counts = join_runs(
                head,
                head_counts,
                suffix,
                counts,
                {index: at[items] < before for index, at in prefix.positions.items()},
            )
        self._store_pooled(
            prefix,
            level.image_rows[rows],
            items,
            suffix,
            counts,
            [prompts[item].position for _, item in entries],
            out,
        )

    def _store_pooled(
        self,
        prefix: _PrefixPart,
        image_rows: torch.Tensor,
        items: torch.Tensor,
        suffix: Mapping[str, torch.Tensor],
        suffix_counts: Mapping[str, torch.Tensor],
        positions: Sequence[int],
        out: dict[str, np.ndarray],
    ) -> None:
        """Join prompts' image prefix (rows ``image_rows``) and their suffix reductions."""
        prefix_lengths = prefix.counts["all"][image_rows, 0].long()
        # the prefix's reductions of each prompt's own prefix (index:N ones are per prompt)
        prefix_reduced = {
            name: values[items if name.startswith("index:") else image_rows]
            for name, values in prefix.reduced.items()
        }
        parts = Parts(
            prefix_reduced,
            {name: count[image_rows] for name, count in prefix.counts.items()},
            suffix,
            suffix_counts,
            {index: at[items] < prefix_lengths for index, at in prefix.positions.items()},
        )
        self._store(out, positions, pool_parts(self.poolings, parts))


@dataclass(frozen=True)
class _Prompt:
    """A prompt of a prefix batch: its image's row, its token ids after the image prefix, and
    its sample's position in the chunk."""

    row: int
    ids: list[int]
    position: int


@dataclass
class _PrefixPart:
    """A prefix batch after its forward pass: the reductions and token counts of its rows, and
    per ``index:N`` pooling the position of token N in each prompt (item)."""

    reduced: Mapping[str, torch.Tensor]
    counts: Mapping[str, torch.Tensor]
    positions: Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class _Runs:
    """The reductions and token counts of shared runs of prompt tokens, one row per run, with
    ``index:N`` picks one row per prompt (``pick_of_item``), and the tokens before each run."""

    reduced: Mapping[str, torch.Tensor]
    counts: Mapping[str, torch.Tensor]
    pick_of_item: torch.Tensor
    tokens_before: torch.Tensor

    def rows(self, runs: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reductions of runs ``runs``, the picks of prompts ``items``."""
        return {
            name: values[self.pick_of_item[items] if name.startswith("index:") else runs]
            for name, values in self.reduced.items()
        }


@dataclass
class _Level:
    """Sequences in a KV cache that suffix passes continue: the images' prefixes, or each a
    prefix followed by a run of tokens that several of its prompts share (``runs``); per row
    its image's row in the prefix batch and the number of tokens before its continuation."""

    cache: Any
    cached: CachedRows
    image_rows: torch.Tensor
    tokens_before: torch.Tensor
    runs: _Runs | None = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class Variant:
    """One task's samples (sample_id, image_path, text) and where its layer-shards go, with
    the metadata recorded in each."""

    samples: pl.DataFrame
    out_paths: Sequence[str | os.PathLike]
    metadata: Mapping[str, Any]


def extract_activations(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_paths: Sequence[str | os.PathLike],
    metadata: Mapping[str, Any],
    batch_size: int,
    **options: Any,
) -> None:
    """Pool the hidden states of ``samples`` (sample_id, image_path, text) and write them:
    :func:`extract_variants` for one variant."""
    extract_variants(
        model, [Variant(samples, out_paths, metadata)], poolings, shards, batch_size, **options
    )


def extract_variants(
    model: LoadedVLM,
    variants: Sequence[Variant],
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    batch_size: int,
    *,
    chunk_dir: str | os.PathLike | None = None,
    chunk_samples: int = CHUNK_SAMPLES,
    resume_key: Mapping[str, Any] | None = None,
    prefix_reuse: bool | None = None,
    prefetch: bool | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    load: Callable[[str], Image.Image] | None = None,
    storage_dtype: str = "float32",
) -> None:
    """Pool the samples of several variants (tasks) in one pass and write each one's shards.

    The samples of all variants are pooled together, so the prompts of one image, whatever
    their task, share its vision pass and its image-prefix pass. ``shards`` are inclusive
    (first, last) hidden-state ranges; each variant's are written to its ``out_paths`` (one
    per shard) as activation tables in the order of its samples, values in ``storage_dtype``
    (see vlprobe.storage), its ``metadata`` recorded with the pooling definitions added.

    Work is done in chunks of about ``chunk_samples`` samples (whole images), kept in
    ``chunk_dir`` (default: a temporary directory, i.e. no resuming) under a fingerprint of
    model, samples, poolings, shards, the metadata and ``resume_key``; a call after an
    interrupted one computes only the chunks that are missing there. The chunk directory is
    removed once every output is written. ``prefix_reuse`` overrides the adapter's setting
    (False forces the plain path); ``prefetch`` prepares the next batch's inputs in a thread
    while the device computes (default: on CUDA). ``on_chunk(index, n_chunks)`` is called
    after each chunk computed in this call.
    """
    check_poolings(poolings)
    for variant in variants:
        missing = [c for c in SAMPLE_COLUMNS if c not in variant.samples.columns]
        if missing:
            raise ValueError(f"samples lack columns {missing}; expected {list(SAMPLE_COLUMNS)}")
        if len(variant.out_paths) != len(shards):
            raise ValueError(f"{len(shards)} shards but {len(variant.out_paths)} output paths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    extractor = Extractor(
        model, poolings, hidden_states, batch_size, prefix_reuse, prefetch, load=load
    )
    samples = pl.concat([variant.samples.select(SAMPLE_COLUMNS) for variant in variants])
    plan = plan_chunks(samples, chunk_samples)
    key = {
        "metadata": [dict(variant.metadata) for variant in variants],
        "sizes": [variant.samples.height for variant in variants],
        "resume_key": dict(resume_key or {}),
        "shards": shards,
        "prefix_reuse": prefix_reuse,
    }
    fingerprint = chunk_fingerprint(model, samples, poolings, hidden_states, chunk_samples, key)
    out_paths = [path for variant in variants for path in variant.out_paths]
    with chunk_root(chunk_dir, out_paths) as root:
        store = ChunkStore(root, fingerprint).open()
        _compute_chunks(extractor, samples, plan, store, on_chunk)
        offset = 0
        for variant in variants:
            rows = range(offset, offset + variant.samples.height)
            _write_shards(model, variant, rows, poolings, shards, plan, store, storage_dtype)
            offset += variant.samples.height
        store.remove()


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
    started, computed, computed_images = time.perf_counter(), 0, 0
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
            computed_images += len({paths[i] for i in rows})
            progress.update(len(rows))
            elapsed = time.perf_counter() - started
            rate = computed / elapsed if elapsed > 0 else float("nan")
            left = n_samples - done_samples - computed
            log.info(
                "chunk %d/%d: %d samples; %.2f images/s, %.2f samples/s; %d samples left, about %s",
                index + 1,
                len(plan),
                len(rows),
                computed_images / elapsed if elapsed > 0 else float("nan"),
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
            "%s: pooled %d samples of %d images in %.1f s (%.2f images/s, %.2f samples/s)",
            model.name,
            computed,
            computed_images,
            elapsed,
            computed_images / elapsed if elapsed > 0 else float("nan"),
            computed / elapsed if elapsed > 0 else float("nan"),
        )


def _write_shards(
    model: LoadedVLM,
    variant: Variant,
    rows: range,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    plan: Sequence[np.ndarray],
    store: ChunkStore,
    storage_dtype: str,
) -> None:
    """Assemble a variant's shard tables from the chunks (its ``rows`` of the pooled samples),
    one shard in memory at a time."""
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    slot_of = {index: slot for slot, index in enumerate(hidden_states)}
    metadata = {
        **variant.metadata,
        "poolings": {name: pooling_of(name).definition for name in poolings},
        "num_hidden_states": model.num_layers + 1,
        "storage_dtype": storage_dtype,
    }
    sample_ids = variant.samples["sample_id"].to_numpy()
    for (first, last), path in zip(shards, variant.out_paths, strict=True):
        slots = slice(slot_of[first], slot_of[last] + 1)
        shape = (len(rows), last - first + 1, model.hidden_size)
        pooled = {name: np.empty(shape, dtype=np.float32) for name in poolings}
        for index, planned in enumerate(plan):
            chunk_rows = store.rows(index)
            if not np.array_equal(chunk_rows, planned):
                raise RuntimeError(f"{store.dir}: chunk {index} holds other samples than planned")
            mine = (chunk_rows >= rows.start) & (chunk_rows < rows.stop)
            if not mine.any():
                continue
            for name in poolings:
                values = store.values(index, name, slots)
                pooled[name][chunk_rows[mine] - rows.start] = values[mine]
        write_activations(
            path, sample_ids, list(range(first, last + 1)), pooled, metadata, storage_dtype
        )
