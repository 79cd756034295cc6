"""Baselines: random weights, blank images, and the caption's text embedding alone."""

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from vlprobe.baselines import (
    BLANK_RGB,
    TEXT_EMBEDDING_POOLING,
    baseline_entry,
    split_model_name,
    write_text_embedding_activations,
)
from vlprobe.extract import run_extraction
from vlprobe.models import build_tiny_model, load_model
from vlprobe.storage import read_activations, shard_path
from vlprobe.tasks import embed_captions, write_task

NUM_LAYERS = 2
SHARDS = [(0, NUM_LAYERS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    build_tiny_model("qwen2_vl", root / "model", {"num_layers": NUM_LAYERS, "seed": 0})
    entry = {
        "family": "qwen2_vl",
        "hf_id": str(root / "model"),
        "num_layers": NUM_LAYERS,
        "batch_size": 4,
        "dtype": "float32",
    }
    return root, entry


def _images(root, name, colour_of):
    paths = []
    for index, size in enumerate([(96, 64), (64, 96), (64, 64)]):
        path = root / f"{name}-{index}.png"
        Image.new("RGB", size, colour_of(index)).save(path)
        paths.append(str(path))
    return paths


def _extract(root, entry, paths, name):
    samples = pl.DataFrame(
        {
            "sample_id": [0, 1, 2, 3],
            "image_path": [paths[0], paths[0], paths[1], paths[2]],
            "text": ["a cat", "a dog on a couch", "objects:", "objects: person"],
        }
    )
    out = root / name
    run_extraction(name, entry, samples, ["mean", "last"], SHARDS, out)
    return read_activations([shard_path(out, SHARDS[0])], "mean")[2]


def test_model_names_and_entries():
    assert split_model_name("qwen2-vl-2b@random_init") == ("qwen2-vl-2b", "random_init")
    assert split_model_name("llava-1.5-7b") == ("llava-1.5-7b", None)
    entry = {"family": "llava", "num_layers": 32}
    assert baseline_entry(entry, "blank_image") == {**entry, "baseline": "blank_image"}
    assert baseline_entry(entry, None) == entry
    with pytest.raises(ValueError, match="unknown baseline 'zeros'"):
        baseline_entry(entry, "zeros")


def test_random_init_has_the_architecture_but_not_the_weights(tiny):
    _, entry = tiny
    trained = load_model("m", entry)
    fresh = load_model("m@random_init", baseline_entry(entry, "random_init"))
    again = load_model("m@random_init", baseline_entry(entry, "random_init"))
    assert type(fresh.model) is type(trained.model)
    assert fresh.num_layers == trained.num_layers and fresh.image_token == trained.image_token
    names = [name for name, _ in trained.model.named_parameters()]
    assert names == [name for name, _ in fresh.model.named_parameters()]
    trained_params = dict(trained.model.named_parameters())
    fresh_params = dict(fresh.model.named_parameters())
    again_params = dict(again.model.named_parameters())
    weights = [n for n in names if n.endswith("q_proj.weight")]
    assert weights and all(not torch.equal(fresh_params[n], trained_params[n]) for n in weights)
    assert all(torch.equal(fresh_params[n], again_params[n]) for n in names)  # seeded


def test_blank_image_baseline_sees_grey_images_of_the_same_size(tiny):
    root, entry = tiny
    coloured = _images(root, "coloured", lambda i: (40 * i, 200, 90))
    grey = _images(root, "grey", lambda i: BLANK_RGB)
    blank = _extract(root, baseline_entry(entry, "blank_image"), coloured, "m@blank_image")
    expected = _extract(root, entry, grey, "grey")
    original = _extract(root, entry, coloured, "coloured")
    np.testing.assert_allclose(blank, expected, atol=1e-5)
    assert not np.allclose(blank, original, atol=1e-3)


def test_text_embedding_activations_are_the_caption_embeddings(tmp_path, sentence_model):
    captions = ["a cat on a mat", "two dogs in the park", "a red bus on the street"]
    task = pl.DataFrame(
        {
            "sample_id": [4, 9, 2],
            "image_id": [1, 1, 2],
            "split": ["train", "train", "eval"],
            "label": [1, 0, 1],
            "caption": captions,
            "text": [f'This image describes "{c}"' for c in captions],
        }
    )
    write_task(task, tmp_path / "caption-tao.parquet", {"kind": "caption", "prompt": "tao"})
    write_text_embedding_activations(tmp_path / "caption-tao.parquet", sentence_model, tmp_path)
    ids, layers, features = read_activations([shard_path(tmp_path, (0, 0))], TEXT_EMBEDDING_POOLING)
    assert ids.tolist() == [4, 9, 2] and layers.tolist() == [0]
    np.testing.assert_allclose(features[:, 0], embed_captions(captions, sentence_model), atol=1e-6)
