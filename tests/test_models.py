"""Model registry and adapters, on tiny randomly initialised models of the real classes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vlprobe.models import FAMILIES, ModelError, build_tiny_model, load_model
from vlprobe.models.base import shared_prefix_length

NUM_LAYERS = 3
MODEL_CLASSES = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
}


def drawing(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.ellipse([width // 8, height // 8, width // 2, height // 2], fill=colour)
    draw.rectangle([width // 2, height // 2, width - 4, height - 4], fill=(30, 30, 160))
    return image


def entry(path: Path, family: str, num_layers: int = NUM_LAYERS) -> dict:
    return {"family": family, "hf_id": str(path), "dtype": "float32", "num_layers": num_layers}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    for family in FAMILIES:
        build_tiny_model(family, root / family, {"num_layers": NUM_LAYERS, "seed": 0})
    return {family: root / family for family in FAMILIES}


def test_registry_covers_the_families():
    assert set(FAMILIES) == set(MODEL_CLASSES)
    assert all(adapter.family == family for family, adapter in FAMILIES.items())


@pytest.mark.parametrize("family", list(MODEL_CLASSES))
def test_tiny_model_loads_back_as_the_real_class(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    model_class, processor_class = MODEL_CLASSES[family]
    assert type(loaded.model).__name__ == model_class
    assert type(loaded.processor).__name__ == processor_class
    assert loaded.num_layers == NUM_LAYERS
    assert loaded.model.config.get_text_config().num_hidden_layers == NUM_LAYERS
    assert loaded.hidden_size == 64
    assert isinstance(loaded, FAMILIES[family])

    images = [drawing((96, 64), (220, 40, 40)), drawing((80, 120), (40, 160, 40))]
    inputs = loaded.inputs(images, ["a cat", "This image contains the following types of objects:"])
    with torch.inference_mode():
        output = loaded.forward(inputs, output_hidden_states=True)
    assert len(output.hidden_states) == NUM_LAYERS + 1
    # the last hidden state is the final norm's output, i.e. what the hooks see
    seen = []
    handle = loaded.final_norm.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.inference_mode():
        loaded.forward(inputs)
    handle.remove()
    torch.testing.assert_close(seen[0], output.hidden_states[-1])


@pytest.mark.parametrize("family", list(MODEL_CLASSES))
def test_image_placeholder_comes_before_the_text(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], ["a dog"])
    ids = inputs["input_ids"][0].tolist()
    image_id = loaded.tokenizer.convert_tokens_to_ids(
        loaded.tokenizer.image_token if family == "gemma3" else loaded.image_token
    )
    assert ids.count(image_id) >= 4  # expanded by the processor into several image tokens
    text_ids = loaded.tokenizer("a dog", add_special_tokens=False)["input_ids"]
    assert ids[-len(text_ids) :] == text_ids
    assert max(i for i, token in enumerate(ids) if token == image_id) < len(ids) - len(text_ids)


@pytest.mark.parametrize("family", list(MODEL_CLASSES))
def test_the_image_changes_the_activations(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [drawing((64, 64), (230, 30, 30)), drawing((64, 64), (30, 30, 230))]
    with torch.inference_mode():
        output = loaded.forward(loaded.inputs(images, ["a cat", "a cat"]))
    assert not torch.allclose(output.logits[0], output.logits[1], atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_side(tiny_dirs, padding_side):
    loaded = load_model("tiny", entry(tiny_dirs["llava"], "llava"))
    loaded.padding_side = padding_side
    images = [drawing((64, 64), (0, 0, 0))] * 2
    mask = loaded.inputs(images, ["a", "a cat on a couch near the window"])["attention_mask"]
    padded_row = mask[0]
    assert padded_row.sum() < len(padded_row)
    assert (padded_row[0] == 0) == (padding_side == "left")


def test_tiny_models_are_seeded(tmp_path, tiny_dirs):
    build_tiny_model("llava", tmp_path / "same", {"num_layers": NUM_LAYERS, "seed": 0})
    build_tiny_model("llava", tmp_path / "other", {"num_layers": NUM_LAYERS, "seed": 1})
    reference = load_file(tiny_dirs["llava"] / "model.safetensors")
    same = load_file(tmp_path / "same" / "model.safetensors")
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert all(torch.equal(reference[key], same[key]) for key in reference)
    assert not all(torch.equal(reference[key], other[key]) for key in reference)
    tokenizer = (tiny_dirs["llava"] / "tokenizer.json").read_text()
    assert (tmp_path / "same" / "tokenizer.json").read_text() == tokenizer


def test_tiny_keys_shape_the_model(tmp_path):
    build_tiny_model(
        "qwen2_vl", tmp_path / "m", {"num_layers": 2, "hidden_size": 32, "max_image_tokens": 16}
    )
    loaded = load_model("m", entry(tmp_path / "m", "qwen2_vl", num_layers=2))
    assert (loaded.num_layers, loaded.hidden_size) == (2, 32)
    inputs = loaded.inputs([drawing((300, 200), (0, 0, 0))], ["a"])
    assert (
        inputs["input_ids"] == loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ).sum() <= 16


def test_unknown_family_is_named_with_the_supported_ones(tiny_dirs):
    with pytest.raises(ValueError, match=r"'my-model'.*'gpt5'.*qwen2_vl, llava") as error:
        load_model("my-model", {**entry(tiny_dirs["llava"], "llava"), "family": "gpt5"})
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="unknown family 'gpt5'"):
        build_tiny_model("gpt5", "unused", {"num_layers": 2})


def test_layer_count_mismatch_names_model_and_both_numbers(tiny_dirs):
    with pytest.raises(ModelError, match=r"'big'.*num_layers=5.*has 3 decoder layers"):
        load_model("big", entry(tiny_dirs["llava"], "llava", num_layers=5))


def test_processor_without_image_token(tmp_path, tiny_dirs):
    broken = tmp_path / "no-image-token"
    shutil.copytree(tiny_dirs["llava"], broken)
    config_path = broken / "processor_config.json"
    processor_config = json.loads(config_path.read_text())
    processor_config["image_token"] = "<no_such_token>"
    config_path.write_text(json.dumps(processor_config))
    with pytest.raises(ModelError, match=r"'text-only'.*no image token.*<no_such_token>"):
        load_model("text-only", entry(broken, "llava"))


def test_bad_tiny_keys_are_named_and_nothing_is_written(tmp_path):
    with pytest.raises(ModelError, match=r"unknown keys \['hidden'\]"):
        build_tiny_model("llava", tmp_path / "m", {"num_layers": 2, "hidden": 32})
    with pytest.raises(ModelError, match="num_layers is required"):
        build_tiny_model("llava", tmp_path / "m", {"hidden_size": 32})
    assert list(tmp_path.iterdir()) == []


def test_failed_build_keeps_the_previous_model(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")

    def fail(self, save_directory, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transformers.LlavaProcessor.save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        build_tiny_model("llava", target, {"num_layers": 2})
    assert list(tmp_path.iterdir()) == [target]
    assert (target / "config.json").read_text() == "{}"


def test_unknown_dtype_is_named(tiny_dirs):
    with pytest.raises(ModelError, match=r"'m'.*dtype 'float8'"):
        load_model("m", {**entry(tiny_dirs["llava"], "llava"), "dtype": "float8"})


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"'gone': cannot load .*nowhere"):
        load_model("gone", entry(tmp_path / "nowhere", "qwen2_vl"))


# ------------------------------------------------------------------ image prefix reuse

OBJECTS = "This image contains the following types of objects:"
PROMPTS = [
    [OBJECTS, f"{OBJECTS} person, car", "a cat", ""],
    [f"{OBJECTS} dog", OBJECTS],
    ["a plate with a sandwich"],
]


def test_shared_prefix_length_leaves_every_suffix_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps one token
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0


def test_every_family_reuses_its_image_prefix():
    assert all(adapter.prefix_reuse for adapter in FAMILIES.values())


@pytest.mark.parametrize("family", list(MODEL_CLASSES))
def test_prefix_and_suffix_are_the_processors_tokens(tiny_dirs, family):
    """Split on the full text's tokens: prefix + suffix are exactly the processor's token ids
    for the image and the prompt, the whole image is in the prefix, and text that all prompts
    of an image start with is in the prefix too."""
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [
        drawing((96, 64), (220, 40, 40)),
        drawing((64, 120), (40, 160, 40)),
        drawing((64, 64), (0, 0, 200)),
    ]
    prefix = loaded.prefix_batch(images, PROMPTS)
    assert prefix is not None
    ids, mask = prefix.inputs["input_ids"], prefix.attention_mask.bool()
    image_ids = set(loaded.image_token_ids)
    for row, (image, prompts) in enumerate(zip(images, PROMPTS, strict=True)):
        prefix_ids = ids[row][mask[row]].tolist()
        assert not mask[row, : ids.shape[1] - len(prefix_ids)].any()  # padded on the left
        for text, suffix in zip(prompts, prefix.suffixes[row], strict=True):
            expected = loaded.processor(images=[[image]], text=[loaded.prompt(text)])
            assert prefix_ids + suffix == expected["input_ids"][0]
            assert suffix and not image_ids & set(suffix)
        if len(prompts) == 2:  # both start with OBJECTS: its tokens but the last are shared
            shared = loaded.tokenizer(OBJECTS, add_special_tokens=False)["input_ids"]
            assert prefix_ids[-(len(shared) - 1) :] == shared[:-1]
    assert set(prefix.inputs) >= {"input_ids", "attention_mask", "pixel_values"}


def test_qwen2_vl_suffix_positions_continue_the_m_rope_positions(tiny_dirs):
    loaded = load_model("tiny", entry(tiny_dirs["qwen2_vl"], "qwen2_vl"))
    images = [drawing((96, 64), (220, 40, 40)), drawing((64, 120), (40, 160, 40))]
    prompts = [["a cat", "a dog on a couch"], ["two people"]]
    prefix = loaded.prefix_batch(images, prompts)
    assert prefix.position_ids.shape == (3, *prefix.inputs["input_ids"].shape)
    rows = torch.tensor([0, 0, 1])
    suffixes = [prefix.suffixes[0][0], prefix.suffixes[0][1], prefix.suffixes[1][0]]
    inputs, suffix_mask = loaded.suffix_inputs(prefix, rows, suffixes)
    assert inputs["position_ids"].shape == (3, 3, suffix_mask.shape[1])
    assert (
        inputs["attention_mask"].shape[1] == prefix.attention_mask.shape[1] + suffix_mask.shape[1]
    )
    for k, (row, text) in enumerate([(0, "a cat"), (0, "a dog on a couch"), (1, "two people")]):
        full = loaded.inputs([images[row]], [text])
        positions, _ = loaded.model.model.get_rope_index(
            full["input_ids"],
            mm_token_type_ids=full["mm_token_type_ids"],
            image_grid_thw=full["image_grid_thw"],
        )
        n_suffix = len(suffixes[k])
        # the full sequence's positions of the suffix tokens (images differ: 6 vs 8 rows)
        torch.testing.assert_close(
            inputs["position_ids"][:, k, :n_suffix], positions[:, 0, -n_suffix:]
        )


def test_cache_rows_copies_and_leaves_the_prefix_cache_alone(tiny_dirs):
    loaded = load_model("tiny", entry(tiny_dirs["llava"], "llava"))
    images = [drawing((64, 64), (220, 40, 40)), drawing((64, 64), (40, 160, 40))]
    prefix = loaded.prefix_batch(images, [["a cat", "a dog"], ["a bus"]])
    cache = loaded.new_cache()
    with torch.inference_mode():
        loaded.forward_cached(prefix.inputs, cache)
        keys = cache.layers[0].keys.clone()
        selected = loaded.cache_rows(cache, torch.tensor([1, 0, 0]))
        rows = torch.tensor([1, 0, 0])
        inputs, _ = loaded.suffix_inputs(prefix, rows, [[5], [6], [7]])
        loaded.forward_cached(inputs, selected)
    assert torch.equal(cache.layers[0].keys, keys)
    assert torch.equal(selected.layers[0].keys[:, :, : keys.shape[2]], keys[[1, 0, 0]])
    assert selected.get_seq_length() == cache.get_seq_length() + 1
