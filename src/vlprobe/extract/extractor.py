"""The extractor: a model's pooled hidden states over samples, and the extraction job."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm

from vlprobe.baselines import load_blank_image
from vlprobe.data import load_image
from vlprobe.extract.chunks import (
    CHUNK_SAMPLES,
    SAMPLE_COLUMNS,
    ChunkStore,
    chunk_dir_of,
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
    pool_parts,
    pooling_of,
)
from vlprobe.models import LoadedVLM, load_model
from vlprobe.models.base import PrefixBatch
from vlprobe.storage import shard_path, write_activations

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
        parts = Parts(
            prefix_reduced,
            {name: count[rows] for name, count in prefix.counts.items()},
            suffix_reduced,
            tokens.counts(),
            {index: at[items] < prefix_lengths for index, at in prefix.positions.items()},
        )
        pooled = pool_parts(self.poolings, parts)
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
    storage_dtype: str = "float32",
) -> None:
    """Pool the hidden states of ``samples`` (sample_id, image_path, text) and write them.

    ``shards`` are inclusive (first, last) hidden-state ranges, written to ``out_paths`` (one
    per shard) as activation tables in the order of ``samples``, their values in
    ``storage_dtype`` (see vlprobe.storage); ``metadata`` is recorded in each, with the pooling
    definitions added.

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
    with chunk_root(chunk_dir, out_paths) as root:
        store = ChunkStore(root, fingerprint).open()
        _compute_chunks(extractor, samples, plan, store, on_chunk)
        _write_shards(
            model, samples, poolings, shards, out_paths, metadata, plan, store, storage_dtype
        )
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
    storage_dtype: str,
) -> None:
    """Assemble each shard's table from the chunks, one shard in memory at a time."""
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    slot_of = {index: slot for slot, index in enumerate(hidden_states)}
    shard_metadata = {
        **metadata,
        "poolings": {name: pooling_of(name).definition for name in poolings},
        "num_hidden_states": model.num_layers + 1,
        "storage_dtype": storage_dtype,
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
        write_activations(
            path, sample_ids, list(range(first, last + 1)), pooled, shard_metadata, storage_dtype
        )


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
    max_side: int | None = None,
    storage_dtype: str = "float32",
) -> None:
    """One extraction job: load the model of a config entry, pool, write one file per shard
    (values in ``storage_dtype``).

    Images are shrunk to a longer side of at most ``max_side`` before the processor (None: as
    stored).

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
            "max_side": max_side,
            **(metadata or {}),
        },
        batch_size or model_entry["batch_size"],
        chunk_dir=chunk_dir_of(out_dir),
        chunk_samples=chunk_samples,
        resume_key={
            "model_name": model_name,
            "entry": dict(model_entry),
            "device": device,
            "max_side": max_side,
        },
        on_chunk=on_chunk,
        load=functools.partial(
            load_blank_image if model_entry.get("baseline") == "blank_image" else load_image,
            max_side=max_side,
        ),
        storage_dtype=storage_dtype,
    )
