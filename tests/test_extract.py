"""Extraction: hook-based pooling against the plain forward pass, on tiny models of every family."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw

from vlprobe.extract import (
    POOLINGS,
    LayerPooler,
    extract_activations,
    load_image,
    run_extraction,
    shard_path,
)
from vlprobe.models import FAMILIES, build_tiny_model, load_model
from vlprobe.storage import layer_shards, read_activations, read_metadata

NUM_LAYERS = 3
ALL_POOLINGS = list(POOLINGS)
IMAGE_SIZES = [(96, 64), (64, 96), (120, 90), (64, 64)]
TEXTS = [
    "a cat",
    'This image describes "a dog on a couch". Is it right? Answer:',
    "This image contains the following types of objects:",
    "This image contains the following types of objects: person, car",
    "two people riding bicycles in the street",
    "a plate with a sandwich",
    "no",
]


def reference_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str):
    """Pool one hidden state [batch, tokens, hidden] row by row, over the tokens the mask keeps."""
    rows = []
    for values, mask in zip(hidden.float(), attention_mask.bool(), strict=True):
        tokens = values[mask]
        rows.append(
            {
                "last": tokens[-1],
                "first": tokens[0],
                "mean": tokens.mean(dim=0),
                "max": tokens.max(dim=0).values,
            }[pooling]
        )
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    for family in FAMILIES:
        build_tiny_model(family, root / family, {"num_layers": NUM_LAYERS, "seed": 0})
    return {family: root / family for family in FAMILIES}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> pl.DataFrame:
    """Seven samples over four images of different sizes; some images have several prompts."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for index, (width, height) in enumerate(IMAGE_SIZES):
        image = Image.new("RGB", (width, height), (200, 200, 200))
        draw = ImageDraw.Draw(image)
        draw.ellipse([4, 4, width // 2, height // 2], fill=(60 * index, 200 - 40 * index, 90))
        draw.rectangle([width // 2, height // 3, width - 4, height - 4], fill=(30, 30, 160))
        path = root / f"{index}.png"
        image.save(path)
        paths.append(str(path))
    return pl.DataFrame(
        {
            "sample_id": [70, 3, 12, 5, 41, 8, 99],
            "image_path": [paths[i] for i in [2, 0, 3, 0, 1, 2, 3]],
            "text": TEXTS,
        }
    )


def loaded_model(tiny_dirs, family, padding_side="left"):
    entry = {"family": family, "hf_id": str(tiny_dirs[family]), "num_layers": NUM_LAYERS}
    loaded = load_model(family, entry)
    loaded.padding_side = padding_side
    return loaded


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_pool_what_the_forward_pass_returns(tiny_dirs, samples, family, padding_side):
    loaded = loaded_model(tiny_dirs, family, padding_side)
    rows = samples[[0, 1, 6]]  # different image sizes and prompt lengths
    images = [load_image(path) for path in rows["image_path"]]
    inputs = loaded.inputs(images, rows["text"].to_list())
    mask = inputs["attention_mask"]
    assert (mask == 0).any(), "the batch must need padding"
    assert (mask[:, 0] == 0).any() == (padding_side == "left")

    hidden_states = list(range(NUM_LAYERS + 1))
    with LayerPooler(loaded, ALL_POOLINGS, hidden_states) as pooler:
        pooled = pooler.pool(inputs)
    with torch.inference_mode():
        reference = loaded.forward(inputs, output_hidden_states=True).hidden_states
    assert len(reference) == NUM_LAYERS + 1
    for pooling in ALL_POOLINGS:
        assert pooled[pooling].shape == (3, NUM_LAYERS + 1, loaded.hidden_size)
        for index in hidden_states:
            torch.testing.assert_close(
                pooled[pooling][:, index],
                reference_pooling(reference[index], mask, pooling),
                rtol=1e-5,
                atol=1e-5,
                msg=lambda text, p=pooling, i=index: f"{p} pooling, hidden state {i}: {text}",
            )


def test_hooks_are_removed_and_only_chosen_states_pooled(tiny_dirs, samples):
    loaded = loaded_model(tiny_dirs, "qwen2_vl")
    inputs = loaded.inputs([load_image(samples["image_path"][0])], ["a cat"])
    with LayerPooler(loaded, ["mean"], [1, NUM_LAYERS]) as pooler:
        pooled = pooler.pool(inputs)
    assert pooled["mean"].shape == (1, 2, loaded.hidden_size)
    assert not any(layer._forward_pre_hooks for layer in loaded.decoder_layers)
    assert not loaded.final_norm._forward_hooks


def single_sample_reference(loaded, samples) -> dict[str, np.ndarray]:
    """Per pooling [samples, hidden states, hidden], each sample run alone (no padding)."""
    pooled = {pooling: [] for pooling in ALL_POOLINGS}
    for path, text in samples.select("image_path", "text").iter_rows():
        inputs = loaded.inputs([load_image(path)], [text])
        with torch.inference_mode():
            states = loaded.forward(inputs, output_hidden_states=True).hidden_states
        for pooling in ALL_POOLINGS:
            pooled[pooling].append(
                torch.stack(
                    [reference_pooling(h, inputs["attention_mask"], pooling)[0] for h in states]
                )
            )
    return {pooling: torch.stack(values).numpy() for pooling, values in pooled.items()}


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_extract_writes_every_shard_in_sample_order(
    tmp_path, tiny_dirs, samples, family, padding_side
):
    loaded = loaded_model(tiny_dirs, family, padding_side)
    shards = layer_shards(NUM_LAYERS + 1, 3)
    assert len(shards) == 2
    paths = [tmp_path / f"layers-{first}-{last}.parquet" for first, last in shards]
    extract_activations(
        loaded, samples, ALL_POOLINGS, shards, paths, {"task": "caption-tao"}, batch_size=3
    )
    expected = single_sample_reference(loaded, samples)
    for pooling in ALL_POOLINGS:
        layers, features = [], []
        for path in paths:
            sample_ids, shard_layers, values = read_activations([path], pooling)
            np.testing.assert_array_equal(sample_ids, samples["sample_id"].to_numpy())
            layers.extend(shard_layers.tolist())
            features.append(values)
        assert layers == list(range(NUM_LAYERS + 1))
        np.testing.assert_allclose(
            np.concatenate(features, axis=1), expected[pooling], rtol=1e-4, atol=1e-4
        )
    metadata = read_metadata(paths[0])
    assert metadata["task"] == "caption-tao"
    assert metadata["poolings"] == {name: POOLINGS[name][0] for name in ALL_POOLINGS}
    assert metadata["num_hidden_states"] == NUM_LAYERS + 1


def test_out_of_memory_halves_the_batch(tmp_path, tiny_dirs, samples, monkeypatch):
    loaded = loaded_model(tiny_dirs, "llava")
    forward, batch_sizes = loaded.forward, []

    def forward_with_small_memory(inputs, **kwargs):
        batch_sizes.append(len(inputs["input_ids"]))
        if len(inputs["input_ids"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(inputs, **kwargs)

    monkeypatch.setattr(loaded, "forward", forward_with_small_memory)
    shards = [(0, NUM_LAYERS)]
    paths = [tmp_path / "small.parquet"]
    extract_activations(loaded, samples, ["last"], shards, paths, {}, batch_size=4)
    assert batch_sizes[:2] == [4, 2] and max(batch_sizes[1:]) == 2
    monkeypatch.undo()
    extract_activations(loaded, samples, ["last"], shards, [tmp_path / "big.parquet"], {}, 4)
    _, _, small = read_activations(paths, "last")
    _, _, big = read_activations([tmp_path / "big.parquet"], "last")
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-5)


def test_run_extraction_writes_one_file_per_shard(tmp_path, tiny_dirs, samples):
    entry = {
        "family": "qwen2_vl",
        "hf_id": str(tiny_dirs["qwen2_vl"]),
        "revision": None,
        "dtype": "float32",
        "batch_size": 4,
        "num_layers": NUM_LAYERS,
    }
    shards = layer_shards(NUM_LAYERS + 1, 2)
    out_dir = tmp_path / "part-0"
    run_extraction(
        "tiny-qwen", entry, samples, ["mean", "max"], shards, out_dir, metadata={"task": "t"}
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["layers-0-1.parquet", "layers-2-3.parquet"]
    assert shard_path(out_dir, shards[1]) == out_dir / "layers-2-3.parquet"
    metadata = read_metadata(out_dir / "layers-0-1.parquet")
    assert {key: metadata[key] for key in ("model", "family", "dtype", "task")} == {
        "model": "tiny-qwen",
        "family": "qwen2_vl",
        "dtype": "float32",
        "task": "t",
    }
    _, layers, values = read_activations([out_dir / "layers-2-3.parquet"], "max")
    assert layers.tolist() == [2, 3] and values.shape == (samples.height, 2, 64)


def test_bad_arguments_are_named(tmp_path, tiny_dirs, samples):
    loaded = loaded_model(tiny_dirs, "llava")
    out = [tmp_path / "x.parquet"]
    with pytest.raises(
        ValueError, match=r"\['median'\].*one of \['last', 'mean', 'max', 'first'\]"
    ):
        extract_activations(loaded, samples, ["median"], [(0, 1)], out, {}, 2)
    with pytest.raises(ValueError, match=r"indices 0\.\.3"):
        extract_activations(loaded, samples, ["last"], [(0, 4)], out, {}, 2)
    with pytest.raises(ValueError, match=r"lack columns \['text'\]"):
        extract_activations(loaded, samples.drop("text"), ["last"], [(0, 1)], out, {}, 2)
    assert not out[0].exists()
