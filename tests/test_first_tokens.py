"""First-token analysis on a tiny Qwen2-VL over the demo COCO data."""

import polars as pl
import pytest
import torch

from vlprobe.data import build_images_table, make_demo_coco
from vlprobe.extract import load_image
from vlprobe.first_tokens import TOKEN_TABLE_SCHEMA, run_first_token_job, token_frequencies
from vlprobe.models import build_tiny_model, load_model
from vlprobe.tasks import build_object_rows, category_names, object_task, write_task

PROMPTS = {
    "nocat": ("This image contains the following types of objects:", "none"),
    "withcat": ("This image contains the following types of objects:", "others"),
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
        metadata = {
            "kind": "object",
            "prompt": prompt,
            "template": template,
            "categories": categories,
            "label_names": category_names(files.instances),
        }
        write_task(object_task(rows, template, categories, 0), tasks[prompt], metadata)
    build_tiny_model("qwen2_vl", root / "model", {"num_layers": 2, "seed": 0})
    entry = {"family": "qwen2_vl", "hf_id": str(root / "model"), "num_layers": 2, "batch_size": 4}
    return root, files, images, tasks, entry


def test_tables_count_greedy_first_tokens_per_prompt_and_image_kind(study):
    root, files, images, tasks, entry = study
    images_path, out = root / "images.parquet", root / "t.parquet"
    table = run_first_token_job("tiny", entry, tasks, images_path, files.images_dir, "person", out)
    assert table.schema == TOKEN_TABLE_SCHEMA
    assert pl.read_parquet(out).equals(table)
    assert (root / "t.tsv").read_text().splitlines()[0].split("\t") == list(TOKEN_TABLE_SCHEMA)
    # with at most 10 distinct tokens, the counts of each prompt cover all 10 eval images
    n_eval = images.filter(pl.col("split") == "eval").height
    per_prompt = table.group_by("prompt").agg(pl.col("count").sum(), pl.col("rank").max())
    for count, rank in per_prompt.select("count", "rank").iter_rows():
        assert count == n_eval or rank == 10
    assert set(table["images"]) <= {"positive", "negative"}

    # the recorded token is what generate() produces greedily for that image and prompt
    model = load_model("tiny", entry)
    task = pl.read_parquet(tasks["nocat"]).filter(pl.col("split") == "eval").head(1)
    file_name = images.filter(pl.col("image_id") == task["image_id"][0])["file_name"][0]
    model.padding_side = "left"
    inputs = model.inputs([load_image(files.images_dir / file_name)], task["text"].to_list())
    with torch.inference_mode():
        generated = model.model.generate(**inputs, max_new_tokens=1, do_sample=False)
    token = model.tokenizer.decode(generated[0, -1:])
    assert token in table.filter(pl.col("prompt") == "nocat")["token"].to_list()


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
