"""Extraction: pool every layer's hidden states of a model over a table of (image, prompt) samples.

Pooling happens inside the forward pass. A forward-pre-hook on decoder layer ``i`` sees hidden
state ``i`` (its input) and a forward hook on the final norm sees hidden state ``num_layers``;
each hook reduces its [batch, tokens, hidden] tensor to [batch, hidden] at once, so token-level
hidden states of all layers never exist together. Hidden-state indices are those of
``output_hidden_states=True``: 0 is the decoder input (image features scattered in), the last
is the output of the final norm.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm import tqdm
from transformers import BatchFeature

from vlprobe.models import LoadedVLM, load_model
from vlprobe.storage import shard_path, write_activations

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("sample_id", "image_path", "text")


@dataclass(frozen=True)
class TokenMask:
    """Which positions of a padded batch hold tokens, and where each sequence starts and ends."""

    mask: torch.Tensor  # [batch, seq] bool
    first: torch.Tensor  # [batch] index of the first token
    last: torch.Tensor  # [batch] index of the last token
    count: torch.Tensor  # [batch, 1] float32 number of tokens
    rows: torch.Tensor  # [batch] arange, for gathering one position per row

    @classmethod
    def from_attention_mask(cls, attention_mask: torch.Tensor) -> TokenMask:
        mask = attention_mask.bool()
        as_int = mask.int()
        # argmax returns the first maximal index: the first token, or (flipped) the last one;
        # this holds for left and right padding alike
        first = as_int.argmax(dim=1)
        last = mask.shape[1] - 1 - as_int.flip(dims=[1]).argmax(dim=1)
        count = as_int.sum(dim=1, keepdim=True).float()
        rows = torch.arange(mask.shape[0], device=mask.device)
        return cls(mask=mask, first=first, last=last, count=count, rows=rows)


def _pool_last(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.last].float()


def _pool_first(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden[tokens.rows, tokens.first].float()


def _pool_mean(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    # float32 before summing: half-precision sums over hundreds of tokens overflow; `where`
    # rather than multiplying by the mask, so that non-finite values at padding cannot leak in
    summed = torch.where(tokens.mask[..., None], hidden.float(), 0.0).sum(dim=1)
    return summed / tokens.count


def _pool_max(hidden: torch.Tensor, tokens: TokenMask) -> torch.Tensor:
    return hidden.masked_fill(~tokens.mask[..., None], float("-inf")).amax(dim=1).float()


# pooling name -> (definition recorded in the output metadata, function)
POOLINGS: dict[str, tuple[str, Callable[[torch.Tensor, TokenMask], torch.Tensor]]] = {
    "last": ("hidden state of the last non-padding token", _pool_last),
    "mean": ("mean over all non-padding tokens (image and text)", _pool_mean),
    "max": ("element-wise maximum over all non-padding tokens (image and text)", _pool_max),
    "first": ("hidden state of the first non-padding token", _pool_first),
}


def check_poolings(poolings: Sequence[str]) -> None:
    unknown = [name for name in poolings if name not in POOLINGS]
    if unknown or not poolings:
        raise ValueError(f"poolings {list(poolings)}: each must be one of {list(POOLINGS)}")


class LayerPooler:
    """Hooks on a model's decoder that pool the chosen hidden states during a forward pass.

    Use as a context manager (the hooks are removed on exit) and call :meth:`pool` per batch.
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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tokens: TokenMask | None = None
        self._pooled: dict[str, torch.Tensor] = {}
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
            return  # a forward pass outside pool(): not ours to record
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
        for name in self.poolings:
            self._pooled[name][:, slot] = POOLINGS[name][1](hidden, self._tokens)

    @torch.inference_mode()
    def pool(self, inputs: BatchFeature) -> dict[str, torch.Tensor]:
        """Run one batch; per pooling a float32 CPU tensor [batch, len(hidden_states), hidden]."""
        tokens = TokenMask.from_attention_mask(inputs["attention_mask"])
        shape = (tokens.mask.shape[0], len(self.hidden_states), self.model.hidden_size)
        self._pooled = {
            name: torch.empty(shape, dtype=torch.float32, device=tokens.mask.device)
            for name in self.poolings
        }
        self._seen = [False] * len(self.hidden_states)
        self._tokens = tokens
        try:
            self.model.forward(inputs)
        finally:
            self._tokens = None
        missing = [i for i, seen in zip(self.hidden_states, self._seen, strict=True) if not seen]
        if missing:
            raise RuntimeError(f"{self.model.name!r}: hidden states {missing} were never computed")
        return {name: values.cpu() for name, values in self._pooled.items()}


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


def pool_batches(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    hidden_states: Sequence[int],
    batch_size: int,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Pool the samples batch by batch, ordered by image size.

    Yields ``(rows, pooled)``: the positions of the batch's samples in ``samples`` and, per
    pooling, their values [len(rows), len(hidden_states), hidden]. On CUDA out-of-memory the
    batch size is halved and the batch retried.
    """
    order = batch_order(samples)
    paths, texts = samples["image_path"].to_list(), samples["text"].to_list()
    start = 0
    with LayerPooler(model, poolings, hidden_states) as pooler:
        while start < len(order):
            rows = order[start : start + batch_size]
            images = [load_image(paths[row]) for row in rows]
            try:
                pooled = pooler.pool(model.inputs(images, [texts[row] for row in rows]))
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                log.warning("CUDA out of memory: batch size halved to %d", batch_size)
                torch.cuda.empty_cache()
                continue
            yield rows, pooled
            start += len(rows)


def extract_activations(
    model: LoadedVLM,
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_paths: Sequence[str | os.PathLike],
    metadata: Mapping[str, Any],
    batch_size: int,
) -> None:
    """Pool the hidden states of ``samples`` (sample_id, image_path, text) and write them.

    ``shards`` are inclusive (first, last) hidden-state ranges, written to ``out_paths`` (one
    per shard) as activation tables in the order of ``samples``; ``metadata`` is recorded in
    each, with the pooling definitions added.
    """
    check_poolings(poolings)
    missing = [column for column in SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise ValueError(f"samples lack columns {missing}; expected {list(SAMPLE_COLUMNS)}")
    if len(out_paths) != len(shards):
        raise ValueError(f"{len(shards)} shards but {len(out_paths)} output paths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hidden_states = sorted({i for first, last in shards for i in range(first, last + 1)})
    slot_of = {index: slot for slot, index in enumerate(hidden_states)}
    n_samples = samples.height
    pooled = {
        name: np.empty((n_samples, len(hidden_states), model.hidden_size), dtype=np.float32)
        for name in poolings
    }
    started = time.perf_counter()
    with tqdm(
        total=n_samples, unit="sample", desc=model.name, file=sys.stderr, mininterval=2.0
    ) as progress:
        for rows, batch in pool_batches(model, samples, poolings, hidden_states, batch_size):
            for name, values in batch.items():
                pooled[name][rows] = values.numpy()
            progress.update(len(rows))
    elapsed = time.perf_counter() - started
    log.info(
        "%s: pooled %d samples x %d hidden states in %.1f s (%.2f samples/s)",
        model.name,
        n_samples,
        len(hidden_states),
        elapsed,
        n_samples / elapsed if elapsed > 0 else float("nan"),
    )
    shard_metadata = {
        **metadata,
        "poolings": {name: POOLINGS[name][0] for name in poolings},
        "num_hidden_states": model.num_layers + 1,
    }
    sample_ids = samples["sample_id"].to_numpy()
    for (first, last), path in zip(shards, out_paths, strict=True):
        slots = [slot_of[index] for index in range(first, last + 1)]
        write_activations(
            path,
            sample_ids,
            list(range(first, last + 1)),
            {name: values[:, slots] for name, values in pooled.items()},
            shard_metadata,
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
) -> None:
    """One extraction job: load the model of a config entry, pool, write one file per shard."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    model = load_model(model_name, model_entry, device=device)
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
            "dtype": model_entry.get("dtype", "float32"),
            **(metadata or {}),
        },
        model_entry["batch_size"],
    )
