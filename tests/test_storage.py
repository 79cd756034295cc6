import numpy as np
import pytest

from vlprobe.storage import (
    DamagedTableError,
    layer_shards,
    read_activations,
    read_features,
    read_metadata,
    write_activations,
)


def test_layer_shards_cover_every_hidden_state_once():
    shards = layer_shards(29, 4)
    covered = [layer for first, last in shards for layer in range(first, last + 1)]
    assert covered == list(range(29))
    assert shards[-1] == (28, 28)
    with pytest.raises(ValueError):
        layer_shards(5, 0)


def test_activations_roundtrip_across_parts(tmp_path):
    rng = np.random.default_rng(0)
    layers = [3, 4, 5]
    parts = []
    for k, ids in enumerate([[10, 11], [12, 13, 14]]):
        pooled = {
            "last": rng.normal(size=(len(ids), 3, 8)).astype(np.float32),
            "mean": rng.normal(size=(len(ids), 3, 8)).astype(np.float32),
        }
        path = tmp_path / f"part-{k}" / "layers-3-5.parquet"
        write_activations(path, ids, layers, pooled, {"model": "m", "poolings": ["last", "mean"]})
        parts.append((path, pooled))
    ids, read_layers, features = read_activations([p for p, _ in parts], "mean")
    assert ids.tolist() == [10, 11, 12, 13, 14]
    assert read_layers.tolist() == layers
    np.testing.assert_array_equal(features, np.concatenate([pooled["mean"] for _, pooled in parts]))
    assert read_metadata(parts[0][0])["model"] == "m"
    assert not list(tmp_path.rglob("*.tmp"))


def test_shape_mismatch_names_the_pooling(tmp_path):
    with pytest.raises(ValueError, match="last"):
        write_activations(tmp_path / "x.parquet", [1, 2], [0], {"last": np.zeros((2, 2, 4))}, {})
    assert not (tmp_path / "x.parquet").exists()


def _shard(tmp_path, values, dtype, name="layers-0-1.parquet"):
    path = tmp_path / "part-0" / name
    write_activations(path, range(len(values)), [0, 1], {"mean": values}, {"model": "m"}, dtype)
    return path


def test_half_precision_storage_halves_the_disk_and_rounds_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).normal(scale=30, size=(64, 2, 256)).astype(np.float32)
    sizes = {}
    for dtype in ("float32", "float16", "bfloat16"):
        path = _shard(tmp_path / dtype, values, dtype)
        sizes[dtype] = path.stat().st_size
        _, _, read = read_activations([path], "mean")
        assert read.dtype == np.float32
        expected = torch.from_numpy(values).to(getattr(torch, dtype)).float().numpy()
        np.testing.assert_array_equal(read, expected)
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["bfloat16"] < 0.6 * sizes["float32"]


def test_float16_never_stores_an_overflow_it_keeps_float32_and_says_so(tmp_path, caplog):
    values = np.ones((4, 2, 8), dtype=np.float32)
    values[2, 1, 3] = -70_000.0  # a massive activation, past float16's 65,504
    path = _shard(tmp_path, values, "float16")
    np.testing.assert_array_equal(read_activations([path], "mean")[2], values)
    assert "pooling mean, layers 0-1: values up to 7e+04 exceed float16's range" in caplog.text
    assert "stored as float32" in caplog.text


def test_unknown_storage_dtype_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"storage dtype 'int8' is not one of"):
        _shard(tmp_path, np.zeros((1, 2, 4), np.float32), "int8")


def test_a_damaged_shard_names_its_file_and_the_part_to_rebuild(tmp_path):
    path = _shard(tmp_path, np.ones((4, 2, 8), dtype=np.float32), "float16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    with pytest.raises(DamagedTableError) as error:
        read_activations([path], "mean")
    message = str(error.value)
    assert message.startswith(f"{path} is damaged (")
    assert message.endswith(
        f"delete {path.parent} and run snakemake again: it rebuilds it and reruns what "
        "depends on it"
    )
    assert "\n" not in message


def test_features_come_back_in_the_order_asked_and_missing_samples_are_named(tmp_path):
    rng = np.random.default_rng(1)
    paths, pooled = [], []
    for k, ids in enumerate([[10, 11], [12, 13, 14]]):
        values = rng.normal(size=(len(ids), 2, 4)).astype(np.float32)
        path = tmp_path / f"part-{k}" / "layers-0-1.parquet"
        write_activations(path, ids, [0, 1], {"mean": values}, {})
        paths.append(path)
        pooled.append(values)
    everything = np.concatenate(pooled)
    layers, features = read_features(paths, "mean", [14, 10, 12, 11, 13])
    assert layers.tolist() == [0, 1]
    np.testing.assert_array_equal(features, everything[[4, 0, 2, 1, 3]])
    with pytest.raises(ValueError, match=r"samples \[99\] have no activations"):
        read_features(paths, "mean", [10, 99])
