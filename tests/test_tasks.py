import numpy as np
import polars as pl
import pytest

from vlprobe.data import CocoFiles, build_images_table, make_demo_coco
from vlprobe.tasks import (
    TaskError,
    build_caption_pairs,
    build_object_rows,
    caption_task,
    category_names,
    extraction_samples,
    label_matrix,
    mine_hard_negatives,
    object_task,
    task_part,
)

PROMPT = "This image contains the following types of objects:"


def both(value):
    """The same source for the train and the eval split."""
    return {"train": value, "eval": value}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    files = make_demo_coco(tmp_path_factory.mktemp("demo"), n_images=30, seed=0)
    images, _ = build_images_table(both(files), {"train": 20, "eval": 10}, 0, "error")
    return files, images


@pytest.fixture(scope="module")
def pairs(demo, sentence_model):
    files, images = demo
    return build_caption_pairs(
        images, both(files.captions), both(files.captions), 2, 40, sentence_model, 0
    )


def test_mined_negative_is_the_most_similar_other_image_caption():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(60, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    image_ids = np.repeat(np.arange(12), 5)
    positives = np.arange(0, 60, 7)
    # with every caption a candidate, the miner must equal brute force
    negatives, similarity = mine_hard_negatives(positives, image_ids, embeddings, 60, seed=0)
    for row, negative, sim in zip(positives, negatives, similarity, strict=True):
        others = np.flatnonzero(image_ids != image_ids[row])
        brute = others[np.argmax(embeddings[others] @ embeddings[row])]
        assert negative == brute
        assert sim == pytest.approx(float(embeddings[brute] @ embeddings[row]), abs=1e-6)
    # with a few sampled candidates: never the own image, deterministic per seed
    few, _ = mine_hard_negatives(positives, image_ids, embeddings, 5, seed=1, block_size=3)
    assert (image_ids[few] != image_ids[positives]).all()
    again, _ = mine_hard_negatives(positives, image_ids, embeddings, 5, seed=1, block_size=3)
    assert (few == again).all()


def test_caption_pairs_are_balanced_and_negatives_foreign(pairs, demo):
    _, images = demo
    assert pairs.filter(pl.col("label") == 1).height == 2 * images.height
    assert pairs.filter(pl.col("label") == 0).height == 2 * images.height
    negatives = pairs.filter(pl.col("label") == 0)
    assert (negatives["source_image_id"] != negatives["image_id"]).all()
    assert negatives["similarity"].is_between(-1.0, 1.0001).all()
    # a pair keeps its image's split
    split = dict(images.select("image_id", "split").iter_rows())
    assert all(split[i] == s for i, s in pairs.select("image_id", "split").iter_rows())


def test_caption_prompt_fill(pairs):
    task = caption_task(pairs, 'This image describes "{caption}". Is it right? Answer:')
    assert task["sample_id"].n_unique() == task.height
    assert task["text"][0].startswith('This image describes "')
    with pytest.raises(TaskError, match="placeholder"):
        caption_task(pairs, "no placeholder")


def test_too_few_captions_names_the_key(demo, sentence_model):
    files, images = demo
    with pytest.raises(TaskError, match="positives_per_image"):
        build_caption_pairs(
            images, both(files.captions), both(files.captions), 6, 40, sentence_model, 0
        )


def test_withcat_never_names_its_held_out_category(demo):
    files, images = demo
    rows = build_object_rows(images, both(files.instances))
    task = object_task(rows, PROMPT, "others", seed=0)
    expected_rows = sum(len(p) + 1 for p in rows["present"])
    assert task.height == expected_rows
    for text, held_out, present in task.select("text", "held_out", "present").iter_rows():
        listed = text.removeprefix(PROMPT).strip()
        named = set(listed.split(", ")) if listed else set()
        assert held_out not in named
        assert named == set(present) - {held_out}
    nocat = object_task(rows, PROMPT, "none", seed=0)
    assert nocat.height == rows.height and (nocat["text"] == PROMPT).all()


def test_withcat_label_matrix_selects_one_row_per_image_and_category(demo):
    files, images = demo
    rows = build_object_rows(images, both(files.instances))
    names = category_names(files.instances)
    task = object_task(rows, PROMPT, "others", seed=0)
    meta = {"kind": "object", "categories": "others", "label_names": names}
    _, labels, mask, _ = label_matrix(task, meta)
    assert labels.shape == (task.height, 80)
    # every image contributes exactly one row to each category's task
    per_image = pl.DataFrame(
        {"image_id": task["image_id"], **{str(k): mask[:, k] for k in range(80)}}
    )
    counts = per_image.group_by("image_id").sum().drop("image_id").to_numpy()
    assert (counts == 1).all()
    # the chosen row for category c is the one leaving c out when c is present
    for row in np.flatnonzero(mask[:, names.index("dog")]):
        assert task["held_out"][int(row)] == ("dog" if labels[row, names.index("dog")] else None)


def test_parts_keep_images_together_and_cover_the_task(demo, pairs):
    files, images = demo
    task = caption_task(pairs, "{caption}")
    parts = [task_part(task, k, 3) for k in range(3)]
    assert sum(p.height for p in parts) == task.height
    image_sets = [set(p["image_id"]) for p in parts]
    assert all(not (a & b) for i, a in enumerate(image_sets) for b in image_sets[i + 1 :])
    samples = extraction_samples(task, images, files.images_dir, 1, 3)
    assert samples.columns == ["sample_id", "image_path", "text"]
    assert all(
        CocoFiles(files.instances, files.captions, files.images_dir)
        .images_dir.joinpath(p.rsplit("/", 1)[1])
        .is_file()
        for p in samples["image_path"]
    )


def test_real_coco_full_val_pool(coco_mini, sentence_model):
    files = CocoFiles.in_directory(coco_mini)
    images, _ = build_images_table(both(files), {"train": 10, "eval": 5}, 0, "error")
    pool = coco_mini / "annotations" / "captions_val2017_full.json"
    pairs = build_caption_pairs(
        images, both(files.captions), both(pool), 1, 5000, sentence_model, 0
    )
    negatives = pairs.filter(pl.col("label") == 0)
    assert negatives.height == 15
    assert (negatives["source_image_id"] != negatives["image_id"]).all()
    assert negatives["similarity"].mean() > 0.5  # hard negatives, not random captions
