"""Extraction on tiny models of every family: hook pooling and image prefix reuse against the
plain full forward pass, sharded output, out-of-memory halving, and resuming from chunks."""

import logging
import re
import threading
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from apple_fastvlm import APPLE, apple_forward
from helpers import drawing
from PIL import Image
from tiny_models import BUILT, FAMILY_PARAMS, NUM_LAYERS, entry, image_ends_text, layer_inputs
from transformers.utils import ModelOutput

from vlprobe.data import load_image
from vlprobe.extract import (
    POOLINGS,
    ExtractionJob,
    Extractor,
    LayerPooler,
    TaskPart,
    Variant,
    batch_order,
    chunk_dir_of,
    extract_activations,
    extract_variants,
    passes,
    plan_chunks,
    pooling_of,
    run_extraction,
)
from vlprobe.extract import extractor as extractor_module
from vlprobe.extract.extractor import shared_runs
from vlprobe.models import FAMILIES, ModelError, load_model
from vlprobe.storage import layer_shards, read_activations, read_metadata, shard_path

# every pooling; token 5 and token -6 fall in the image prefix of some prompts and in the
# prompt's suffix of others
ALL_POOLINGS = [*POOLINGS, "index:0", "index:5", "index:-1", "index:-6"]
STATES = list(range(NUM_LAYERS + 1))
IMAGE_SIZES = [(96, 64), (64, 96), (120, 90), (64, 64)]
OBJECTS = "This image contains the following types of objects:"
# several prompts per image, of different lengths; one image has a single prompt, and one
# prompt is empty (its suffix is the end of the image block)
SAMPLES = [
    (70, 2, "a cat"),
    (3, 0, 'This image describes "a dog on a couch". Is it right? Answer:'),
    (12, 3, OBJECTS),
    (5, 0, f"{OBJECTS} person, car"),
    (41, 1, "two people riding bicycles in the street"),
    (8, 2, "a plate with a sandwich"),
    (99, 3, f"{OBJECTS} dog"),
    (17, 0, OBJECTS),
    (23, 2, ""),
    (31, 3, f"{OBJECTS} person, bicycle, car, dog"),
]


def reference_pooling(
    hidden: torch.Tensor, attention_mask: torch.Tensor, image_mask: torch.Tensor, pooling: str
):
    """Pool one hidden state [batch, tokens, hidden] row by row, over the tokens the mask keeps
    (``image_mask``: the image tokens)."""
    rows = []
    for values, mask, image in zip(hidden.float(), attention_mask.bool(), image_mask, strict=True):
        tokens, image = values[mask], image[mask]
        if pooling.startswith("index:"):
            rows.append(tokens[int(pooling.removeprefix("index:"))])
            continue
        rows.append(
            {
                "last": tokens[-1],
                "first": tokens[0],
                "mean": tokens.mean(dim=0),
                "max": tokens.max(dim=0).values,
                "image_mean": tokens[image].mean(dim=0),
                "text_mean": tokens[~image].mean(dim=0),
            }[pooling]
        )
    return torch.stack(rows)


@pytest.fixture(scope="module")
def models(tiny_dirs):
    return {family: load_model(family, entry(tiny_dirs[family], family)) for family in BUILT}


@pytest.fixture
def loaded(models, request):
    """The model of the test's ``family``, with left padding restored afterwards."""
    model = models[request.node.callspec.params["family"]]
    yield model
    model.padding_side = "left"


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> pl.DataFrame:
    """Ten samples over four images of different sizes; most images have several prompts."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for index, (width, height) in enumerate(IMAGE_SIZES):
        path = root / f"{index}.png"
        drawing((width, height), (60 * index, 200 - 40 * index, 90)).save(path)
        paths.append(str(path))
    return pl.DataFrame(
        {
            "sample_id": [sample_id for sample_id, _, _ in SAMPLES],
            "image_path": [paths[image] for _, image, _ in SAMPLES],
            "text": [text for _, _, text in SAMPLES],
        }
    )


def single_sample_reference(loaded, samples, forward=None) -> dict[str, np.ndarray]:
    """Per pooling [samples, states, hidden]: each sample alone in the plain full forward pass
    (``forward``, by default the adapter's) with output_hidden_states=True, pooled afterwards."""
    forward = forward or loaded.forward
    pooled = {pooling: [] for pooling in ALL_POOLINGS}
    for path, text in samples.select("image_path", "text").iter_rows():
        inputs = loaded.inputs([load_image(path)], [text])
        mask, image = inputs["attention_mask"], loaded.image_token_mask(inputs)
        with torch.inference_mode():
            states = layer_inputs(
                loaded, inputs, forward(inputs, output_hidden_states=True).hidden_states
            )
        for pooling in ALL_POOLINGS:
            pooled[pooling].append(
                torch.stack([reference_pooling(h, mask, image, pooling)[0] for h in states])
            )
    return {pooling: torch.stack(values).numpy() for pooling, values in pooled.items()}


@pytest.fixture(scope="module")
def references(models, samples) -> dict[str, dict[str, np.ndarray]]:
    """Per family, the single-sample reference; for Apple's FastVLM, of Apple's own forward."""
    return {
        family: single_sample_reference(
            model, samples, partial(apple_forward, model) if family == APPLE else None
        )
        for family, model in models.items()
    }


def pool_in_sample_order(extractor: Extractor, samples) -> dict[str, np.ndarray]:
    """Pool ``samples`` in batch order, as a chunk is pooled; per pooling [samples, states,
    hidden] in the order of ``samples``."""
    order = batch_order(samples)
    with extractor:
        pooled = extractor.pool(
            [samples["image_path"][int(i)] for i in order],
            [samples["text"][int(i)] for i in order],
        )
    return {
        name: values[:, np.argsort(order)].transpose(1, 0, 2) for name, values in pooled.items()
    }


def assert_pooled_equal(actual, expected, atol=1e-5):
    for pooling in expected:
        np.testing.assert_allclose(
            actual[pooling], expected[pooling], rtol=1e-4, atol=atol, err_msg=f"{pooling} pooling"
        )


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_hooks_pool_what_the_forward_pass_returns(loaded, samples, family, padding_side):
    loaded.padding_side = padding_side
    rows = samples[[0, 1, 6]]  # different image sizes and prompt lengths
    images = [load_image(path) for path in rows["image_path"]]
    inputs = loaded.inputs(images, rows["text"].to_list())
    mask, image = inputs["attention_mask"], loaded.image_token_mask(inputs)
    assert (mask == 0).any(), "the batch must need padding"
    assert (mask[:, 0] == 0).any() == (padding_side == "left")

    with LayerPooler(loaded, ALL_POOLINGS, STATES) as pooler:
        pooled = pooler.pool(inputs)
    with torch.inference_mode():
        reference = loaded.forward(inputs, output_hidden_states=True).hidden_states
        reference = layer_inputs(loaded, inputs, reference)
    assert len(reference) == NUM_LAYERS + 1
    for pooling in ALL_POOLINGS:
        assert pooled[pooling].shape == (3, NUM_LAYERS + 1, loaded.hidden_size)
        for index in STATES:
            torch.testing.assert_close(
                pooled[pooling][:, index],
                reference_pooling(reference[index], mask, image, pooling),
                rtol=1e-5,
                atol=1e-5,
                msg=lambda text, p=pooling, i=index: f"{p} pooling, hidden state {i}: {text}",
            )


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_prefix_reuse_equals_the_full_forward(loaded, samples, references, family):
    """Prefix once per image, then every prompt's suffix on its cache: the pooled values equal
    the plain full forward's, for every pooling and hidden state."""
    order = batch_order(samples)
    paths = [samples["image_path"][int(i)] for i in order]
    texts = [samples["text"][int(i)] for i in order]
    prefix_passes = []
    forward_cached = loaded.forward_cached

    def counting(inputs, cache, **kwargs):
        if cache.get_seq_length() == 0:  # a prefix pass: it starts the cache
            prefix_passes.append(len(inputs["input_ids"]))
        return forward_cached(inputs, cache, **kwargs)

    loaded.forward_cached = counting
    try:  # two images per prefix pass: of different sizes, so left-padded in Qwen2-VL
        with Extractor(loaded, ALL_POOLINGS, STATES, 2) as extractor:
            pooled = extractor.pool(paths, texts)
    finally:
        del loaded.forward_cached
    if not loaded.prefix_reuse:  # a prefix-LM (PaliGemma): never a prefix pass, all plain
        assert not extractor.prefix_reuse
        assert prefix_passes == []
    elif image_ends_text(loaded):
        # nothing follows the image tokens (Phi-4's, or a bare placeholder), so the image with
        # an empty prompt cannot be split after them: its prefix batch (2 images) goes plain
        assert extractor.plain_images == 2
        assert prefix_passes == [2]
    else:
        assert extractor.plain_images == 0
        assert prefix_passes == [2, 2]  # one prefix per image
    expected = {
        name: values[order].transpose(1, 0, 2) for name, values in references[family].items()
    }
    assert_pooled_equal(pooled, expected)


def test_shared_runs_are_chosen_to_save_the_most_tokens():
    suffixes = [[1, 2, 3, 4], [1, 2, 3], [1, 2, 9], [5, 6], [5, 7]]
    # [1, 2] once for three prompts saves 4 tokens, [1, 2, 3] for two of them 3
    assert shared_runs(suffixes, 1) == [(2, [0, 1, 2]), (1, [3, 4])]
    assert shared_runs(suffixes, 4) == [(2, [0, 1, 2])]
    assert shared_runs(suffixes, 5) == []
    # a prompt repeated: its whole text is the run, for both
    assert shared_runs([[1, 2], [3], [1, 2]], 2) == [(2, [0, 2])]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_prompts_sharing_a_run_of_tokens_pass_it_once(
    loaded, samples, references, family, monkeypatch
):
    """A run of tokens that prompts of an image start with, after their image prefix, is
    computed once and their rest continues it: a prompt that is the run alone (the image's
    NoCat prompt inside its WithCat one) and one with a rest both equal the full forward,
    with fewer tokens computed than without shared runs."""
    order = batch_order(samples)
    paths = [samples["image_path"][int(i)] for i in order]
    texts = [samples["text"][int(i)] for i in order]
    forward_cached = loaded.forward_cached

    def pool(min_tokens: int) -> tuple[dict[str, np.ndarray], int]:
        computed = []

        def counting(inputs, cache, **kwargs):
            if cache.get_seq_length() > 0:  # a pass that continues a cache
                computed.append(
                    int(inputs["attention_mask"][:, -inputs["input_ids"].shape[1] :].sum())
                )
            return forward_cached(inputs, cache, **kwargs)

        monkeypatch.setattr(extractor_module, "SHARED_RUN_MIN_TOKENS", min_tokens)
        loaded.forward_cached = counting
        try:
            with Extractor(loaded, ALL_POOLINGS, STATES, 2) as extractor:
                pooled = extractor.pool(paths, texts)
        finally:
            del loaded.forward_cached
        return pooled, sum(computed)

    shared, shared_tokens = pool(1)
    alone, alone_tokens = pool(10**9)
    expected = {
        name: values[order].transpose(1, 0, 2) for name, values in references[family].items()
    }
    assert_pooled_equal(shared, expected)
    assert_pooled_equal(alone, expected)
    if loaded.prefix_reuse and not image_ends_text(loaded):
        # image 0: " contains the following types of objects:" once for NoCat and WithCat
        assert shared_tokens < alone_tokens


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_plain_path_equals_the_full_forward(loaded, samples, references, family):
    loaded.padding_side = "right"
    pooled = pool_in_sample_order(
        Extractor(loaded, ALL_POOLINGS, STATES, 3, prefix_reuse=False), samples
    )
    assert_pooled_equal(pooled, references[family])


# the families whose tiny models carry their real checkpoints' chat template
CHAT_FAMILIES = [f for f in BUILT if f in FAMILIES and FAMILIES[f].tiny_chat_template]


@pytest.fixture(scope="module")
def chat_models(tiny_dirs):
    return {
        family: load_model(family, {**entry(tiny_dirs[family], family), "prompt_format": "chat"})
        for family in CHAT_FAMILIES
    }


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_format_tokens_are_the_processors_own(chat_models, samples, family, generation_prompt):
    """One user turn, the image then the text: the ids of the processor's apply_chat_template."""
    loaded = chat_models[family]
    loaded.generation_prompt = generation_prompt
    try:
        for path, text in samples.select("image_path", "text").head(4).iter_rows():
            image = load_image(path)
            content = [{"type": "image", "image": image}, {"type": "text", "text": text}]
            expected = loaded.processor.apply_chat_template(
                [{"role": "user", "content": content}],
                add_generation_prompt=generation_prompt,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            ours = loaded.inputs([image], [text])
            assert ours["input_ids"].tolist() == expected["input_ids"].tolist()
            assert set(ours) == set(expected)
            for key in expected.keys() - {"input_ids"}:  # pixel values under each family's name
                # ours are in the model's dtype (Llama 4's image processor returns bfloat16)
                want = (
                    expected[key].to(ours[key].dtype)
                    if expected[key].is_floating_point()
                    else expected[key]
                )
                torch.testing.assert_close(ours[key], want, msg=key)
    finally:
        loaded.generation_prompt = False


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_format_prefix_reuse_equals_the_full_forward(chat_models, samples, family):
    """The shared prefix runs through the system prompt, the turn's start and the image block;
    every pooling equals that of each chat-format sample alone in the full forward pass."""
    loaded = chat_models[family]
    extractor = Extractor(loaded, ALL_POOLINGS, STATES, 2)
    pooled = pool_in_sample_order(extractor, samples)
    # a template that writes nothing after the image when the text is empty and no generation
    # prompt follows (DeepSeek-VL's): as in raw format, that image's batch (2) goes plain
    assert extractor.plain_images == (2 if image_ends_text(loaded) else 0)
    assert_pooled_equal(pooled, single_sample_reference(loaded, samples))


@pytest.fixture(scope="module")
def apple_chat(tiny_dirs):
    return load_model(APPLE, {**entry(tiny_dirs[APPLE], APPLE), "prompt_format": "chat"})


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_format_of_apples_fastvlm_is_its_model_cards(apple_chat, samples, generation_prompt):
    """Apple's checkpoint has a text-only chat template (its tokenizer's): as its model card
    does, one user turn "<image>\n" + text is rendered, the text around <image> tokenised
    without special tokens, and the image's features go where <image> was."""
    loaded, tokenizer = apple_chat, apple_chat.tokenizer
    loaded.generation_prompt = generation_prompt
    try:
        for path, text in samples.select("image_path", "text").head(4).iter_rows():
            image = load_image(path)
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": "<image>\n" + text}],
                add_generation_prompt=generation_prompt,
                tokenize=False,
            )
            assert loaded.prompt(text) == rendered
            pre, post = rendered.split("<image>")
            ids = loaded.inputs([image], [text])["input_ids"][0].tolist()
            features = ids.count(loaded.image_token_id)
            assert features > 1
            assert ids == (
                tokenizer(pre, add_special_tokens=False)["input_ids"]
                + [loaded.image_token_id] * features
                + tokenizer(post, add_special_tokens=False)["input_ids"]
            )
    finally:
        loaded.generation_prompt = False


def test_chat_format_prefix_reuse_on_apples_fastvlm_equals_its_forward(apple_chat, samples):
    extractor = Extractor(apple_chat, ALL_POOLINGS, STATES, 2)
    pooled = pool_in_sample_order(extractor, samples)
    assert extractor.plain_images == 0
    reference = single_sample_reference(apple_chat, samples, partial(apple_forward, apple_chat))
    assert_pooled_equal(pooled, reference)


def test_chat_format_needs_a_chat_template_and_a_known_format(tiny_dirs):
    kosmos2 = entry(tiny_dirs["kosmos2"], "kosmos2")
    with pytest.raises(ModelError) as error:
        load_model("k", {**kosmos2, "prompt_format": "chat"})
    assert str(error.value) == (
        f"model 'k': prompt_format chat, but the processor of {tiny_dirs['kosmos2']} has no chat "
        "template; use prompt_format: raw"
    )
    with pytest.raises(ModelError, match=r"model 'k': prompt_format 'chatml' is not one of"):
        load_model("k", {**kosmos2, "prompt_format": "chatml"})


def test_a_prefix_lm_family_takes_the_plain_path(models, samples, references, monkeypatch):
    """An adapter that declares its image prefix not reusable (a prefix-LM such as PaliGemma)
    is never split: every sample runs whole, and pools as the full forward pass does."""
    loaded = models["llava"]
    monkeypatch.setattr(type(loaded), "prefix_reuse", False)
    monkeypatch.setattr(loaded, "prefix_batch", lambda *args: pytest.fail("prefix split"))
    pooled = pool_in_sample_order(Extractor(loaded, ALL_POOLINGS, STATES, 3), samples)
    assert_pooled_equal(pooled, references["llava"])


def test_index_minus_one_is_the_last_token(references):
    for family, pooled in references.items():
        np.testing.assert_array_equal(pooled["index:-1"], pooled["last"], err_msg=family)
        np.testing.assert_array_equal(pooled["index:0"], pooled["first"], err_msg=family)


def test_prefetch_prepares_the_next_prefix_batch_in_a_thread(models, samples, references):
    loaded = models["qwen2_vl"]
    order = batch_order(samples)
    threads = []
    prefix_batch = loaded.prefix_batch

    def recording(images, prompts):
        threads.append(threading.current_thread().name)
        return prefix_batch(images, prompts)

    loaded.prefix_batch = recording
    try:
        with Extractor(loaded, ["mean", "last"], STATES, 1, prefetch=True) as extractor:
            pooled = extractor.pool(
                [samples["image_path"][int(i)] for i in order],
                [samples["text"][int(i)] for i in order],
            )
    finally:
        del loaded.prefix_batch
    assert len(threads) == len(IMAGE_SIZES)
    assert threads[0] == threading.current_thread().name  # the first batch: nothing ahead
    assert all(name.startswith("vlprobe-prefetch") for name in threads[1:])
    expected = {k: references["qwen2_vl"][k][order].transpose(1, 0, 2) for k in ("mean", "last")}
    assert_pooled_equal(pooled, expected)


def test_images_without_a_shared_prefix_take_the_plain_path(models, samples, references):
    loaded = models["llava"]
    order = batch_order(samples)
    loaded.prefix_batch = lambda images, prompts: None
    try:
        with Extractor(loaded, ["mean", "last"], STATES, 2) as extractor:
            pooled = extractor.pool(
                [samples["image_path"][int(i)] for i in order],
                [samples["text"][int(i)] for i in order],
            )
    finally:
        del loaded.prefix_batch
    assert extractor.plain_images == len(IMAGE_SIZES)
    expected = {k: references["llava"][k][order].transpose(1, 0, 2) for k in ("mean", "last")}
    assert_pooled_equal(pooled, expected)


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_no_decoder_returns_the_hidden_states_of_all_layers(loaded, samples, family, prefix_reuse):
    """Pooling happens in the hooks: neither the model nor its decoder stack returns the
    token-level hidden states of every layer. (A vision tower may: LLaVA takes its features
    from the tower's second-to-last layer.)"""
    layers = loaded.decoder_layers
    decoder = [m for m in loaded.model.modules() if getattr(m, "layers", None) is layers]
    assert len(decoder) == 1
    returned = []

    def record(module, args, output):
        if isinstance(output, ModelOutput) and output.get("hidden_states") is not None:
            returned.append(type(module).__name__)

    handles = [module.register_forward_hook(record) for module in [loaded.model, *decoder]]
    try:
        with Extractor(loaded, ["mean", "last"], STATES, 2, prefix_reuse) as extractor:
            pooled = extractor.pool(samples["image_path"].to_list(), samples["text"].to_list())
    finally:
        for handle in handles:
            handle.remove()
    assert pooled["mean"].shape == (len(STATES), samples.height, loaded.hidden_size)
    assert returned == []


def test_hooks_are_removed_and_only_chosen_states_pooled(models, samples):
    loaded = models["qwen2_vl"]
    inputs = loaded.inputs([load_image(samples["image_path"][0])], ["a cat"])
    with LayerPooler(loaded, ["mean"], [1, NUM_LAYERS]) as pooler:
        pooled = pooler.pool(inputs)
    assert pooled["mean"].shape == (1, 2, loaded.hidden_size)
    assert not any(layer._forward_pre_hooks for layer in loaded.decoder_layers)
    assert not loaded.final_norm._forward_hooks


def test_extract_writes_every_shard_in_sample_order(tmp_path, models, samples, references):
    loaded = models["gemma3"]
    shards = layer_shards(NUM_LAYERS + 1, 3)
    assert len(shards) == 2
    paths = [tmp_path / f"layers-{first}-{last}.parquet" for first, last in shards]
    extract_activations(
        loaded, samples, ALL_POOLINGS, shards, paths, {"task": "caption-tao"}, batch_size=3
    )
    for pooling in ALL_POOLINGS:
        layers, features = [], []
        for path in paths:
            sample_ids, shard_layers, values = read_activations([path], pooling)
            np.testing.assert_array_equal(sample_ids, samples["sample_id"].to_numpy())
            layers.extend(shard_layers.tolist())
            features.append(values)
        assert layers == STATES
        np.testing.assert_allclose(
            np.concatenate(features, axis=1), references["gemma3"][pooling], rtol=1e-4, atol=1e-5
        )
    metadata = read_metadata(paths[0])
    assert metadata["task"] == "caption-tao"
    assert metadata["poolings"] == {name: pooling_of(name).definition for name in ALL_POOLINGS}
    assert "position -6 of the unpadded sequence" in metadata["poolings"]["index:-6"]
    assert metadata["num_hidden_states"] == NUM_LAYERS + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


@pytest.mark.parametrize(
    ("prefix_reuse", "prefetch"), [(True, False), (True, True), (False, False)]
)
def test_out_of_memory_halves_the_batch(
    tmp_path, models, samples, references, prefix_reuse, prefetch, caplog
):
    """Batches of 2 (images or samples) run out of memory: 1 from then on; with prefetch, the
    second batch of 2 was being prepared ahead and is dropped."""
    loaded = models["llava"]
    batch_sizes = []

    def with_small_memory(forward):
        def run(inputs, *args, **kwargs):
            if "pixel_values" in inputs:
                batch_sizes.append(len(inputs["input_ids"]))
                if len(inputs["input_ids"]) > 1:
                    raise torch.OutOfMemoryError("CUDA out of memory")
            return forward(inputs, *args, **kwargs)

        return run

    loaded.forward = with_small_memory(loaded.forward)
    loaded.forward_cached = with_small_memory(loaded.forward_cached)
    try:
        shards = [(0, NUM_LAYERS)]
        paths = [tmp_path / "small.parquet"]
        extract_activations(
            loaded,
            samples,
            ["last"],
            shards,
            paths,
            {},
            2,
            prefix_reuse=prefix_reuse,
            prefetch=prefetch,
        )
    finally:
        del loaded.forward, loaded.forward_cached
    assert batch_sizes[:2] == [2, 1] and max(batch_sizes[1:]) == 1
    halvings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert halvings == [f"{loaded.name}: CUDA out of memory: batch size halved to 1"]
    _, _, small = read_activations(paths, "last")
    np.testing.assert_allclose(small, references["llava"]["last"], rtol=1e-4, atol=1e-5)


def test_batches_group_images_of_one_size_and_prompts_of_one_image(tmp_path):
    sizes = [(64, 48), (48, 64), (64, 48), (32, 32), (48, 64), (64, 48)]
    paths = []
    for index, size in enumerate(sizes):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.new("RGB", size).save(paths[-1])
    # two prompts per image, interleaved across images
    samples = pl.DataFrame(
        {"image_path": paths * 2, "text": ["a longer prompt"] * 6 + ["short"] * 6}
    )
    ordered = samples[batch_order(samples)]
    size_of = dict(zip(paths, sizes, strict=True))
    runs = [size_of[path] for path in ordered["image_path"]]
    # each size in one run: images of one size share batches, with little padding
    assert [size for k, size in enumerate(runs) if k == 0 or size != runs[k - 1]] == sorted(
        set(sizes)
    )
    # each image's prompts next to each other, the shorter first
    image_runs = ordered["image_path"].rle()
    assert image_runs.struct.field("len").to_list() == [2] * len(sizes)
    assert ordered["text"].to_list() == ["short", "a longer prompt"] * len(sizes)


def test_chunks_hold_whole_images(samples):
    for size in (1, 2, 3, 100):
        plan = plan_chunks(samples, size)
        rows = np.concatenate(plan)
        assert sorted(rows.tolist()) == list(range(samples.height))
        chunk_of_image = {}
        for index, chunk in enumerate(plan):
            assert len(chunk) >= size or index == len(plan) - 1
            for row in chunk:
                path = samples["image_path"][int(row)]
                assert chunk_of_image.setdefault(path, index) == index
    # images have 3, 1, 3 and 3 samples: the one-sample image shares a chunk of size 2
    assert [len(chunk) for chunk in plan_chunks(samples, 2)] == [3, 4, 3]
    assert len(plan_chunks(samples, 100)) == 1


class Killed(Exception):
    """A simulated kill of the job."""


def test_interrupted_extraction_resumes_from_its_chunks(tmp_path, models, samples, caplog):
    loaded = models["llava"]
    shards = layer_shards(NUM_LAYERS + 1, 2)
    n_chunks = len(plan_chunks(samples, 2))
    out_dir = tmp_path / "part-0"

    def extract(out_dir, poolings, kill_after=None):
        computed = []

        def on_chunk(index, total):
            assert total == n_chunks
            computed.append(index)
            if len(computed) == kill_after:
                raise Killed

        out_paths = [shard_path(out_dir, shard) for shard in shards]
        extract_activations(
            loaded,
            samples,
            poolings,
            shards,
            out_paths,
            {"task": "t"},
            batch_size=2,
            chunk_dir=chunk_dir_of(out_dir),
            chunk_samples=2,
            resume_key={"entry": "x"},
            on_chunk=on_chunk,
        )
        return out_paths, computed

    # a killed run of another configuration leaves stale chunks
    with pytest.raises(Killed):
        extract(out_dir, ["mean"], kill_after=1)
    (stale,) = chunk_dir_of(out_dir).iterdir()
    # killed after two chunks: they stay, with their markers, beside the (absent) output
    with pytest.raises(Killed):
        extract(out_dir, ["mean", "last"], kill_after=2)
    assert not stale.exists()
    (chunks,) = chunk_dir_of(out_dir).iterdir()
    assert len(list(chunks.glob("*.done"))) == 2
    assert not out_dir.exists()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlprobe.extract"):
        out_paths, resumed = extract(out_dir, ["mean", "last"])
    assert len(resumed) == n_chunks - 2  # only the missing chunk
    # the log says what was kept, then per chunk the speed and the time left
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith(f"resuming: 2 of {n_chunks} chunks") for m in messages)
    progress = [m for m in messages if m.startswith(f"chunk {n_chunks}/{n_chunks}:")]
    assert len(progress) == 1
    assert re.search(r"samples/s; 0 samples left, about 0:00:00$", progress[0])
    assert not chunk_dir_of(out_dir).exists()
    reference, computed = extract(tmp_path / "whole", ["mean", "last"])
    assert computed == list(range(n_chunks))
    for path, expected in zip(out_paths, reference, strict=True):
        assert pq.read_table(path).equals(pq.read_table(expected), check_metadata=True)


def test_run_extraction_writes_one_file_per_shard(tmp_path, tiny_dirs, samples):
    entry = {
        "family": "qwen2_vl",
        "hf_id": str(tiny_dirs["qwen2_vl"]),
        "revision": None,
        "dtype": "auto",  # float32 on the CPU, recorded as such
        "batch_size": 4,
        "num_layers": NUM_LAYERS,
    }
    shards = layer_shards(NUM_LAYERS + 1, 2)
    out_dir = tmp_path / "part-0"
    chunks = []
    run_extraction(
        "tiny-qwen",
        entry,
        samples,
        ["mean", "max"],
        shards,
        out_dir,
        metadata={"task": "t"},
        chunk_samples=3,
        on_chunk=lambda index, n: chunks.append(chunk_dir_of(out_dir).exists()),
    )
    assert chunks and all(chunks)  # chunks were kept beside the output while running
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-0"]
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


def test_max_side_shrinks_images_before_the_processor(tmp_path, tiny_dirs, samples):
    """max_side 48 gives what the same extraction gives on images shrunk beforehand."""
    entry = {
        "family": "qwen2_vl",
        "hf_id": str(tiny_dirs["qwen2_vl"]),
        "batch_size": 4,
        "num_layers": NUM_LAYERS,
    }
    shrunk_dir = tmp_path / "shrunk"
    shrunk_dir.mkdir()
    paths = {}
    for path in samples["image_path"].unique().to_list():
        paths[path] = str(shrunk_dir / Path(path).name)
        load_image(path, 48).save(paths[path])
    shrunk = samples.with_columns(pl.col("image_path").replace_strict(paths))
    shards = [(0, NUM_LAYERS)]
    run_extraction("m", entry, samples, ["mean"], shards, tmp_path / "a", max_side=48)
    run_extraction("m", entry, shrunk, ["mean"], shards, tmp_path / "b")
    plain = tmp_path / "c"
    run_extraction("m", entry, samples, ["mean"], shards, plain)
    a, b, c = (
        read_activations([shard_path(tmp_path / name, shards[0])], "mean")[2]
        for name in ("a", "b", "c")
    )
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-3)  # the images did change
    assert read_metadata(shard_path(tmp_path / "a", shards[0]))["max_side"] == 48


def test_bad_arguments_are_named(tmp_path, models, samples):
    loaded = models["llava"]
    out = [tmp_path / "x.parquet"]
    with pytest.raises(
        ValueError,
        match=r"\['median'\].*one of \['last', 'mean', 'max', 'first', 'image_mean', "
        r"'text_mean'\] or index:N",
    ):
        extract_activations(loaded, samples, ["median"], [(0, 1)], out, {}, 2)
    with pytest.raises(ValueError, match=r"index:1\.5"):
        extract_activations(loaded, samples, ["index:1.5"], [(0, 1)], out, {}, 2)
    with pytest.raises(
        ValueError, match=r"^'llava': pooling index:-500 is outside a sequence of \d+ tokens$"
    ):
        extract_activations(loaded, samples, ["index:-500"], [(0, 1)], out, {}, 2)
    with pytest.raises(ValueError, match=r"indices 0\.\.3"):
        extract_activations(loaded, samples, ["last"], [(0, 4)], out, {}, 2)
    with pytest.raises(ValueError, match=r"lack columns \['text'\]"):
        extract_activations(loaded, samples.drop("text"), ["last"], [(0, 1)], out, {}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        extract_activations(loaded, samples, ["last"], [(0, 1)], out, {}, 0)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ one pass for every task

# three tasks over the same four images: each image's prompts spread over them
TASK_ROWS = {"caption-a": [0, 1, 4, 5], "object-b": [2, 3, 7, 8], "object-c": [6, 9]}


def task_parts(samples, rows=TASK_ROWS) -> list[TaskPart]:
    return [
        TaskPart(task, samples[positions], {"prompt": task}) for task, positions in rows.items()
    ]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_one_pass_over_every_task_equals_each_task_alone(
    tmp_path, loaded, samples, references, family
):
    """The prompts of all tasks in one pass: one prefix pass per image, whatever the tasks,
    and every task's tables hold what it alone gives (the plain full forward, per sample)."""
    prefix_rows = []
    forward_cached = loaded.forward_cached

    def counting(inputs, cache, **kwargs):
        if cache.get_seq_length() == 0:
            prefix_rows.append(len(inputs["input_ids"]))
        return forward_cached(inputs, cache, **kwargs)

    shards = [(0, 1), (2, NUM_LAYERS)]
    parts = task_parts(samples)
    variants = [
        Variant(part.samples, [shard_path(tmp_path / part.task, s) for s in shards], {})
        for part in parts
    ]
    loaded.forward_cached = counting
    try:
        extract_variants(loaded, variants, ALL_POOLINGS, shards, batch_size=4)
    finally:
        del loaded.forward_cached
    if loaded.prefix_reuse and not image_ends_text(loaded):  # see the prefix reuse test
        assert sum(prefix_rows) == samples["image_path"].n_unique()  # 4 images, 10 prompts
    positions = {int(sample_id): row for row, sample_id in enumerate(samples["sample_id"])}
    for part in parts:
        rows = [positions[int(i)] for i in part.samples["sample_id"]]
        for pooling in ALL_POOLINGS:
            values = np.concatenate(
                [
                    read_activations([shard_path(tmp_path / part.task, s)], pooling)[2]
                    for s in shards
                ],
                axis=1,
            )
            np.testing.assert_allclose(
                values,
                references[family][pooling][rows],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{part.task}, {pooling} pooling",
            )


@pytest.fixture
def pass_job(tiny_dirs, monkeypatch):
    """An extraction job of the tiny LLaVA that counts the samples it pools and its loads."""
    counts = {"samples": 0, "loads": 0}
    pool, load = Extractor.pool, passes.load_model

    def counting_pool(self, paths, texts):
        counts["samples"] += len(paths)
        return pool(self, paths, texts)

    def counting_load(*args, **kwargs):
        counts["loads"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(Extractor, "pool", counting_pool)
    monkeypatch.setattr(passes, "load_model", counting_load)
    job = ExtractionJob(
        "tiny-llava",
        {**entry(tiny_dirs["llava"], "llava"), "batch_size": 4},
        ["mean", "last"],
        [(0, 1), (2, NUM_LAYERS)],
        storage_dtype="float16",
    )
    return job, counts


def run_and_publish(job, parts, root) -> dict[str, str]:
    """The image pass over ``parts``, then each part's tables job, as the workflow runs them."""

    def published(task: str) -> Path:
        return root / task / "part-0"

    status = job.run_passes(parts, root / "passes" / "part-0", published)
    for part in parts:
        job.publish(part, root / "passes" / "part-0", published(part.task))
    return status


def tables_of(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.glob("[co]*/part-0/*.parquet")}


def test_one_pass_stages_every_task_and_a_new_task_computes_only_itself(
    tmp_path, samples, pass_job
):
    job, counts = pass_job
    parts = task_parts(samples)
    first, added = parts[:2], parts[2]
    assert run_and_publish(job, first, tmp_path) == {
        "caption-a": "computed",
        "object-b": "computed",
    }
    assert counts == {"samples": 8, "loads": 1}  # one pass, one model load
    before = tables_of(tmp_path)
    assert len(before) == 4 and not list((tmp_path / "passes" / "part-0").iterdir())

    # a variant added later: its own job finds nothing staged and pools its prompts alone
    out = tmp_path / added.task / "part-0"
    assert job.publish(added, tmp_path / "passes" / "part-0", out) == "computed"
    assert counts == {"samples": 8 + 2, "loads": 2}
    assert {p: v for p, v in tables_of(tmp_path).items() if p in before} == before

    # an edited variant: the same
    edited = TaskPart("object-b", first[1].samples.with_columns(text=pl.lit("x")), {})
    job.publish(edited, tmp_path / "passes" / "part-0", tmp_path / "object-b" / "part-0")
    assert counts == {"samples": 14, "loads": 3}
    first[1] = edited

    # the pass rerun (what it depends on unchanged): current tables are linked, not computed
    staging = tmp_path / "passes" / "part-0"
    linked = job.run_passes([*first, added], staging, lambda task: tmp_path / task / "part-0")
    assert linked == dict.fromkeys(["caption-a", "object-b", "object-c"], "linked")
    assert counts == {"samples": 14, "loads": 3}
    for task in linked:
        for table in (staging / task).iterdir():
            assert table.samefile(tmp_path / task / "part-0" / table.name)
    path = shard_path(tmp_path / "object-b" / "part-0", job.shards[0])
    assert read_activations([path], "mean")[2].shape == (4, 2, 64)
    assert read_metadata(path)["storage_dtype"] == "float16"


def test_a_task_alone_holds_what_it_holds_pooled_with_the_others(tmp_path, samples, pass_job):
    job, _ = pass_job
    parts = task_parts(samples)
    run_and_publish(job, parts, tmp_path)
    shared = read_activations([shard_path(tmp_path / "object-b/part-0", job.shards[1])], "last")
    job.publish(parts[1], tmp_path / "nothing-staged", tmp_path / "b")
    alone = read_activations([shard_path(tmp_path / "b", job.shards[1])], "last")
    assert shared[0].tolist() == alone[0].tolist()
    np.testing.assert_allclose(alone[2], shared[2], rtol=1e-3, atol=1e-3)  # float16 storage
