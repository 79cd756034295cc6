"""First-token analysis on a tiny Qwen2-VL over the demo COCO data."""

import json

import polars as pl
import pytest
import torch

from vlprobe import first_tokens
from vlprobe.data import build_images_table, load_image, make_demo_coco
from vlprobe.first_tokens import (
    TOKEN_TABLE_SCHEMA,
    category_rows,
    greedy_first_tokens,
    run_first_token_job,
    token_frequencies,
)
from vlprobe.models import build_tiny_model, load_model
from vlprobe.tasks import build_object_rows, category_names, object_task, write_task

PROMPTS = {
    "nocat": ("This image contains the following types of objects:", "none"),
    "withcat": ("This image contains the following types of objects: {categories}", "others"),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-tokens")
    files = make_demo_coco(root / "coco", n_images=16, seed=1)
    sources = {"train": files, "eval": files}
    images, _ = build_images_table(sources, {"train": 6, "eval": 10}, 0, "error")
    images.write_parquet(root / "images.parquet")
    rows = build_object_rows(images, {"train": files.instances, "eval": files.instances})
    tasks = {}
    for prompt, (template, categories) in PROMPTS.items():
        tasks[prompt] = root / f"object-{prompt}.parquet"
        names = category_names(files.instances)
        task, metadata = object_task(rows, prompt, template, categories, 0, names)
        write_task(task, tasks[prompt], metadata)
    build_tiny_model("qwen2_vl", root / "model", {"num_layers": 2, "seed": 0})
    entry = {"family": "qwen2_vl", "hf_id": str(root / "model"), "num_layers": 2}
    return root, files, images, tasks, entry


def test_tables_count_greedy_first_tokens_per_prompt_and_image_kind(study):
    root, files, images, tasks, entry = study
    images_path, out = root / "images.parquet", root / "t.parquet"
    table = run_first_token_job(
        "tiny", entry, tasks, images_path, files.images_dir, "person", out, batch_size=4
    )
    assert table.schema == TOKEN_TABLE_SCHEMA
    assert pl.read_parquet(out).equals(table)
    assert (root / "t.tsv").read_text().splitlines()[0].split("\t") == list(TOKEN_TABLE_SCHEMA)
    # every eval image counts once per prompt, as positive (a person in it) or negative
    eval_ids = set(images.filter(pl.col("split") == "eval")["image_id"])
    instances = json.loads(files.instances.read_text())
    (person,) = [c["id"] for c in instances["categories"] if c["name"] == "person"]
    with_person = {
        a["image_id"]
        for a in instances["annotations"]
        if a["category_id"] == person and a["image_id"] in eval_ids
    }
    expected = {"positive": len(with_person), "negative": len(eval_ids - with_person)}
    assert min(expected.values()) > 0
    for prompt in PROMPTS:
        for kind, n_images in expected.items():
            counts = table.filter((pl.col("prompt") == prompt) & (pl.col("images") == kind))
            assert counts["rank"].to_list() == list(range(1, counts.height + 1))
            # all images unless more than 10 distinct tokens were cut off
            assert counts["count"].sum() == n_images or counts.height == 10
            assert counts["fraction"].sum() <= 1.0 + 1e-9


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_rows_probe_the_category_on_every_eval_image_once(study, prompt):
    root, files, images, tasks, entry = study
    rows = category_rows(tasks[prompt], "person")
    eval_images = images.filter(pl.col("split") == "eval")
    assert sorted(rows["image_id"]) == sorted(eval_images["image_id"])  # one row per image
    task = pl.read_parquet(tasks[prompt]).filter(pl.col("split") == "eval")
    chosen = task.join(rows.select("sample_id", "present"), on="sample_id")
    for held_out, present, is_positive, text in chosen.select(
        "held_out", "present", "present_right", "text"
    ).iter_rows():
        assert is_positive == ("person" in present)
        if prompt == "withcat":
            # positives: the row leaving person out; negatives: the row listing all present
            assert held_out == ("person" if is_positive else None)
            assert "person" not in text
            assert all(name in text for name in present if name != "person")


def test_first_tokens_are_what_generate_gives_for_each_prompt_alone(study):
    """Tokens from left-padded batches of 4 equal generate() on each (image, prompt) alone."""
    root, files, images, tasks, entry = study
    rows = pl.concat([category_rows(tasks[prompt], "person") for prompt in PROMPTS])
    files_of = dict(images.select("image_id", "file_name").iter_rows())
    paths = [str(files.images_dir / files_of[i]) for i in rows["image_id"]]
    texts = rows["text"].to_list()
    model = load_model("tiny", entry)
    tokens = greedy_first_tokens(model, paths, texts, batch_size=4)
    lengths = set()
    for path, text, token in zip(paths, texts, tokens, strict=True):
        inputs = model.inputs([load_image(path)], [text])
        lengths.add(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            generated = model.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        assert model.tokenizer.decode(generated[0, -1:]) == token
    assert len(lengths) > 1  # the batches were padded


def test_frequencies_rank_ties_by_token_and_keep_top_k():
    tokens = pl.DataFrame(
        {
            "model": "m",
            "prompt": "nocat",
            "category": "person",
            "images": ["positive"] * 6 + ["negative"] * 2,
            "token": ["a", "b", "b", "c", "c", "d", "x", "x"],
        }
    )
    table = token_frequencies(tokens, top_k=2)
    positive = table.filter(pl.col("images") == "positive")
    assert positive.select("rank", "token", "count").rows() == [(1, "b", 2), (2, "c", 2)]
    assert positive["fraction"].to_list() == pytest.approx([2 / 6, 2 / 6])
    assert table.filter(pl.col("images") == "negative").select("token", "fraction").rows() == [
        ("x", 1.0)
    ]


def test_in_chat_format_the_first_token_follows_the_assistant_turns_start(study, monkeypatch):
    """Where a chat model's first answer token is: after the generation prompt."""
    root, files, _, tasks, entry = study
    texts = []

    def spy(model, paths, prompts, *args):
        texts.extend(model.prompt(text) for text in prompts)
        return greedy_first_tokens(model, paths, prompts, *args)

    monkeypatch.setattr(first_tokens, "greedy_first_tokens", spy)
    chat = {**entry, "prompt_format": "chat"}
    out = root / "chat.parquet"
    run_first_token_job(
        "t", chat, tasks, root / "images.parquet", files.images_dir, "person", out, 4
    )
    assert texts and all(t.startswith("<|im_start|>system\n") for t in texts)
    assert all(t.endswith("<|im_end|>\n<|im_start|>assistant\n") for t in texts)
