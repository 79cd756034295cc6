import numpy as np
import pytest

from vlprobe.storage import layer_shards, read_activations, read_metadata, write_activations


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
