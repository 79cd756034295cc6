"""Storage: atomic Parquet writes and the layer-sharded activation tables.

An activation table holds one row per (sample_id, layer) and one
``fixed_size_list<float>[hidden]`` column per pooling strategy. Its schema metadata (key
``vlprobe``) records what produced it: model id, revision, dtype, task, prompt, poolings.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"vlprobe"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; results should be readable like any file the user writes
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet(frame: pl.DataFrame | pa.Table, path: str | os.PathLike) -> None:
    """Write a polars frame or arrow table to ``path`` atomically."""
    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def layer_shards(num_hidden_states: int, layers_per_shard: int) -> list[tuple[int, int]]:
    """Split hidden-state indices 0..num_hidden_states-1 into inclusive (first, last) ranges."""
    if layers_per_shard < 1:
        raise ValueError(f"layers_per_shard must be >= 1, got {layers_per_shard}")
    return [
        (start, min(start + layers_per_shard, num_hidden_states) - 1)
        for start in range(0, num_hidden_states, layers_per_shard)
    ]


def shard_path(part_dir: str | os.PathLike, shard: Sequence[int]) -> Path:
    """The activation table of one layer-shard inside an extraction part's directory."""
    first, last = shard
    return Path(part_dir) / f"layers-{first}-{last}.parquet"


def activation_table(
    sample_ids: Sequence[int] | np.ndarray,
    layers: Sequence[int],
    pooled: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
) -> pa.Table:
    """Build an activation table from pooled arrays shaped [samples, len(layers), hidden].

    Rows are ordered by sample, then layer.
    """
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    n_samples, n_layers = len(sample_ids), len(layers)
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array(np.repeat(sample_ids, n_layers)),
        "layer": pa.array(np.tile(np.asarray(layers, dtype=np.int16), n_samples)),
    }
    for name, values in pooled.items():
        if values.shape[:2] != (n_samples, n_layers):
            raise ValueError(
                f"pooling {name!r}: expected shape ({n_samples}, {n_layers}, hidden), "
                f"got {values.shape}"
            )
        hidden = values.shape[2]
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, hidden)
    return with_metadata(pa.table(columns), metadata)


def write_activations(
    path: str | os.PathLike,
    sample_ids: Sequence[int] | np.ndarray,
    layers: Sequence[int],
    pooled: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
) -> None:
    """Write one layer-shard of pooled activations atomically (see :func:`activation_table`)."""
    write_parquet(activation_table(sample_ids, layers, pooled, metadata), path)


def with_metadata(table: pa.Table, metadata: Mapping[str, Any]) -> pa.Table:
    """``table`` with ``metadata`` as its ``vlprobe`` schema metadata (see read_metadata)."""
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(dict(metadata)).encode()})


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``vlprobe`` schema metadata of a Parquet file (a task or activation table)."""
    raw = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{path}: no vlprobe metadata; not a table written by vlprobe")
    return json.loads(raw[METADATA_KEY])


def read_activations(
    paths: Sequence[str | os.PathLike], pooling: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one pooling column from activation shards covering the same layers.

    Returns ``(sample_ids [N], layers [L], features [N, L, hidden] float32)`` with samples in
    the order they appear across ``paths``.
    """
    ids_parts, feature_parts, layers = [], [], None
    for path in paths:
        if pooling not in pq.read_schema(path).names:
            raise KeyError(f"{path}: no pooling column {pooling!r}")
        table = pq.read_table(path, columns=["sample_id", "layer", pooling])
        if table.num_rows == 0:  # an extraction part without samples
            continue
        file_layers = np.unique(table.column("layer").to_numpy())
        if layers is None:
            layers = file_layers
        elif not np.array_equal(layers, file_layers):
            raise ValueError(f"{path}: layers {file_layers.tolist()} differ from {layers.tolist()}")
        column = table.column(pooling).combine_chunks()
        hidden = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        n_rows = table.num_rows
        feature_parts.append(values.reshape(n_rows // len(layers), len(layers), hidden))
        ids_parts.append(table.column("sample_id").to_numpy()[:: len(layers)])
    if layers is None:
        raise ValueError(f"no activations in {[str(p) for p in paths]}")
    return np.concatenate(ids_parts), layers, np.concatenate(feature_parts)
