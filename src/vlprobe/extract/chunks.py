"""Resumable jobs: the finished chunks of an extraction, kept until its outputs are written.

Samples are processed in chunks of whole images; each finished chunk is written (atomically,
then a marker) into a chunk directory keyed by a fingerprint of everything that determines its
values. A re-run after a kill computes only the missing chunks; the output files are assembled
from the chunks at the end and the chunk directory is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from vlprobe.models import LoadedVLM
from vlprobe.storage import atomic_path, write_text

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("sample_id", "image_path", "text")
CHUNK_SAMPLES = 256  # samples per resumable chunk (whole images, so a chunk may hold a few more)
CHUNK_FORMAT = 1  # bump when the chunk files change meaning


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
    files = checkpoint_files(source["name_or_path"]) if source["name_or_path"] else None
    if files is not None:
        source["files"] = files
    return source


def checkpoint_files(hf_id: str | os.PathLike) -> list[tuple[str, int, int]] | None:
    """A local checkpoint's files with size and modification time (None for a hub id: its
    revision names it)."""
    directory = Path(hf_id)
    if not directory.is_dir():
        return None
    return sorted(
        (str(path.relative_to(directory)), path.stat().st_size, path.stat().st_mtime_ns)
        for path in directory.rglob("*")
        if path.is_file()
    )


def samples_fingerprint(header: Mapping[str, Any], samples: pl.DataFrame) -> str:
    """A hash of ``header`` and the samples: their rows, and their image files' size and
    modification time."""
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for row in samples.select(SAMPLE_COLUMNS).iter_rows():
        digest.update(json.dumps(row).encode())
    for path in sorted(samples["image_path"].unique().to_list()):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


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
    return samples_fingerprint(header, samples)


@contextlib.contextmanager
def chunk_root(chunk_dir: str | os.PathLike | None, out_paths: Sequence) -> Iterator[Path]:
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


def chunk_dir_of(out_dir: str | os.PathLike) -> Path:
    """Where the chunks of an extraction job's output directory live: beside it, since a
    workflow manager deletes a job's outputs before the job starts."""
    out = Path(out_dir)
    return out.with_name(out.name + ".chunks")
