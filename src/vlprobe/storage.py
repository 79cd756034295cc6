"""Storage: atomic Parquet writes and the layer-sharded activation tables.

An activation table holds one row per (sample_id, layer) and one ``fixed_size_list[hidden]``
column per pooling strategy. Its schema metadata (key ``vlprobe``) records what produced it:
model id, revision, dtype, task, prompt, poolings.

Pooled values are stored as float32, float16 or bfloat16 (:data:`STORAGE_DTYPES`); readers get
float32 back. Parquet has no bfloat16 type, so a bfloat16 column holds the values' 16 bit
patterns as uint16, its field metadata saying so. float16 cannot hold magnitudes past 65,504
(the "massive activations" of some LLMs reach them): a column with such a value is stored as
float32 instead, with a warning in the job log, never clipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
# a pooling column's field metadata: the dtype its values are stored in
DTYPE_KEY = b"vlprobe_dtype"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
FLOAT16_MAX = float(np.finfo(np.float16).max)

log = logging.getLogger(__name__)


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
    dtype: str = "float32",
) -> pa.Table:
    """Build an activation table from pooled arrays shaped [samples, len(layers), hidden],
    each column stored in ``dtype`` (one of :data:`STORAGE_DTYPES`).

    Rows are ordered by sample, then layer.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not one of {list(STORAGE_DTYPES)}")
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    n_samples, n_layers = len(sample_ids), len(layers)
    fields = [pa.field("sample_id", pa.int64()), pa.field("layer", pa.int16())]
    columns: list[pa.Array] = [
        pa.array(np.repeat(sample_ids, n_layers)),
        pa.array(np.tile(np.asarray(layers, dtype=np.int16), n_samples)),
    ]
    for name, values in pooled.items():
        if values.shape[:2] != (n_samples, n_layers):
            raise ValueError(
                f"pooling {name!r}: expected shape ({n_samples}, {n_layers}, hidden), "
                f"got {values.shape}"
            )
        stored, stored_dtype = _encoded(name, layers, values, dtype)
        flat = pa.array(np.ascontiguousarray(stored).reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, values.shape[2])
        fields.append(pa.field(name, column.type, metadata={DTYPE_KEY: stored_dtype.encode()}))
        columns.append(column)
    return with_metadata(pa.Table.from_arrays(columns, schema=pa.schema(fields)), metadata)


def _encoded(
    name: str, layers: Sequence[int], values: np.ndarray, dtype: str
) -> tuple[np.ndarray, str]:
    """``values`` in the dtype they are stored in, and its name (float32 where float16 would
    overflow)."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "bfloat16":
        bits = values.view(np.uint32)
        # round to nearest, ties to even, as torch's float32 -> bfloat16 does
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        return np.where(np.isnan(values), 0x7FC0, rounded >> 16).astype(np.uint16), dtype
    if dtype == "float16":
        finite = np.abs(values[np.isfinite(values)])
        peak = float(finite.max()) if finite.size else 0.0
        if peak <= FLOAT16_MAX:
            return values.astype(np.float16), dtype
        log.warning(
            "pooling %s, layers %d-%d: values up to %.4g exceed float16's range (%.0f); "
            "stored as float32",
            name,
            layers[0],
            layers[-1],
            peak,
            FLOAT16_MAX,
        )
    return values, "float32"


def _decoded(field: pa.Field, values: np.ndarray) -> np.ndarray:
    """A pooling column's flat stored values as float32."""
    stored = (field.metadata or {}).get(DTYPE_KEY, b"float32").decode()
    if stored == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=False)


def write_activations(
    path: str | os.PathLike,
    sample_ids: Sequence[int] | np.ndarray,
    layers: Sequence[int],
    pooled: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    dtype: str = "float32",
) -> None:
    """Write one layer-shard of pooled activations atomically (see :func:`activation_table`)."""
    write_parquet(activation_table(sample_ids, layers, pooled, metadata, dtype), path)


def with_metadata(table: pa.Table, metadata: Mapping[str, Any]) -> pa.Table:
    """``table`` with ``metadata`` as its ``vlprobe`` schema metadata (see read_metadata)."""
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(dict(metadata)).encode()})


class DamagedTableError(ValueError):
    """A table that vlprobe wrote (atomically) but that no longer reads: damaged since."""


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """Name the file, and what to do, when Parquet cannot read it."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as error:
        # writes are atomic, so a file that does not read was damaged after it was written
        # (a copy cut short, a full disk on a synced filesystem): only rebuilding it helps
        producer = Path(path).parent if Path(path).name.startswith("layers-") else Path(path)
        raise DamagedTableError(
            f"{path} is damaged ({error}); delete {producer} and run snakemake again: "
            "it rebuilds it and reruns what depends on it"
        ) from None


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The Parquet schema of ``path``; a damaged file fails naming it (DamagedTableError)."""
    with _reading(path):
        return pq.read_schema(path)


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """``path`` read with pyarrow; a damaged file fails naming it (DamagedTableError)."""
    with _reading(path):
        return pq.read_table(path, columns=columns)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``vlprobe`` schema metadata of a Parquet file (a task or activation table)."""
    raw = read_schema(path).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{path}: no vlprobe metadata; not a table written by vlprobe")
    return json.loads(raw[METADATA_KEY])


def _shard_columns(
    paths: Sequence[str | os.PathLike], pooling: str
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per activation shard with rows: ``(sample_ids [n], layers [L], values [n, L, hidden]
    float32)``; every shard must hold the same layers."""
    layers = None
    for path in paths:
        schema = read_schema(path)
        if pooling not in schema.names:
            raise KeyError(f"{path}: no pooling column {pooling!r}")
        table = read_table(path, columns=["sample_id", "layer", pooling])
        if table.num_rows == 0:  # an extraction part without samples
            continue
        file_layers = np.unique(table.column("layer").to_numpy())
        if layers is None:
            layers = file_layers
        elif not np.array_equal(layers, file_layers):
            raise ValueError(f"{path}: layers {file_layers.tolist()} differ from {layers.tolist()}")
        column = table.column(pooling).combine_chunks()
        values = _decoded(schema.field(pooling), column.flatten().to_numpy(zero_copy_only=False))
        n_samples = table.num_rows // len(layers)
        ids = table.column("sample_id").to_numpy()[:: len(layers)]
        del table, column  # one shard's Arrow copy at a time
        yield ids, layers, values.reshape(n_samples, len(layers), -1)


def read_activations(
    paths: Sequence[str | os.PathLike], pooling: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one pooling column from activation shards covering the same layers.

    Returns ``(sample_ids [N], layers [L], features [N, L, hidden] float32)`` with samples in
    the order they appear across ``paths``.
    """
    shards = list(_shard_columns(paths, pooling))
    if not shards:
        raise ValueError(f"no activations in {[str(p) for p in paths]}")
    ids, layers, values = zip(*shards, strict=True)
    return np.concatenate(ids), layers[0], np.concatenate(values)


def read_features(
    paths: Sequence[str | os.PathLike], pooling: str, sample_ids: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One pooling column of activation shards, rows in the order of ``sample_ids``.

    Returns ``(layers [L], features [len(sample_ids), L, hidden] float32)``, filled shard by
    shard into one array: at paper scale the features are gigabytes, and this holds them once
    (plus one shard), where reading then reordering would hold them three times.
    """
    row_of = {int(sample_id): row for row, sample_id in enumerate(sample_ids)}
    features, layers, filled = None, None, np.zeros(len(row_of), dtype=bool)
    for ids, shard_layers, values in _shard_columns(paths, pooling):
        layers = shard_layers
        if features is None:
            features = np.empty((len(row_of), *values.shape[1:]), dtype=np.float32)
        rows = np.array([row_of.get(int(i), -1) for i in ids], dtype=np.int64)
        keep = rows >= 0  # samples of no wanted row (none in a probe job) are skipped
        features[rows[keep]] = values[keep]
        filled[rows[keep]] = True
    if features is None:
        raise ValueError(f"no activations in {[str(p) for p in paths]}")
    if not filled.all():
        missing = np.asarray(sample_ids)[~filled][:5].tolist()
        raise ValueError(f"samples {missing} have no activations in {paths[0]} and its parts")
    return layers, features
