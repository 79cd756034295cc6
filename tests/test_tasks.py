import copy
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from helpers import both

from vlprobe.data import CocoFiles, build_images_table
from vlprobe.figures import negative_similarity_histogram, save_chart
from vlprobe.tasks import (
    TaskError,
    build_caption_pairs,
    build_object_rows,
    candidate_sets,
    caption_task,
    caption_text_ids,
    category_names,
    extraction_samples,
    label_matrix,
    mine_hard_negatives,
    negative_examples,
    object_task,
    task_part,
    write_html_table,
)

PROMPT = "This image contains the following types of objects:"
WITHCAT = f"{PROMPT} {{categories}}"
STATEMENT = "This image contains the following type of object: {category}"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(demo_coco):
    images, _ = build_images_table(both(demo_coco), {"train": 20, "eval": 10}, 0, "error")
    return demo_coco, images


@pytest.fixture(scope="module")
def real(coco_mini):
    """The real COCO sample: its files, a split of all its images, their object rows."""
    files = CocoFiles.in_directory(coco_mini)
    images, _ = build_images_table(both(files), {"train": 190, "eval": 48}, 0, "error")
    return files, images, build_object_rows(images, both(files.instances))


@pytest.fixture(scope="module")
def pairs(demo, sentence_model):
    files, images = demo
    return build_caption_pairs(
        images, both(files.captions), both(files.captions), 2, 40, sentence_model, 0
    )


def unit_vectors(rows: int, dims: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_mined_negative_is_the_most_similar_other_image_caption():
    embeddings = unit_vectors(60, 16, seed=0)
    image_ids = np.repeat(np.arange(12), 5)
    positives = np.arange(0, 60, 7)
    # with every caption a candidate, the miner must equal brute force
    negatives, similarity = mine_hard_negatives(positives, image_ids, embeddings, 60, seed=0)
    for row, negative, sim in zip(positives, negatives, similarity, strict=True):
        others = np.flatnonzero(image_ids != image_ids[row])
        brute = others[np.argmax(embeddings[others] @ embeddings[row])]
        assert negative == brute
        assert sim == pytest.approx(float(embeddings[brute] @ embeddings[row]), abs=1e-6)
    # with sampled candidates (few: draws with replacement, deduplicated; many: random keys),
    # brute force over the candidate sets the miner drew for the same seed and block size
    for n_candidates in (5, 40):
        few, _ = mine_hard_negatives(
            positives, image_ids, embeddings, n_candidates, seed=1, block_size=3
        )
        assert (image_ids[few] != image_ids[positives]).all()
        drawn = np.concatenate(
            [c for _, c in candidate_sets(positives, image_ids, n_candidates, 1, block_size=3)]
        )
        brute = [
            c[np.argmax(embeddings[c] @ embeddings[row])]
            for row, c in zip(positives, drawn, strict=True)
        ]
        assert (few == np.array(brute)).all()
        again, _ = mine_hard_negatives(
            positives, image_ids, embeddings, n_candidates, seed=1, block_size=3
        )
        assert (few == again).all()


def test_a_negative_never_repeats_its_positives_text():
    embeddings = unit_vectors(60, 16, seed=0)
    image_ids = np.repeat(np.arange(12), 5)
    texts = [f"caption {i}" for i in range(60)]
    positives = np.arange(0, 60, 7)
    plain, _ = mine_hard_negatives(positives, image_ids, embeddings, 60, seed=0)
    # positives whose best negative is theirs alone and not itself a positive
    distinct = np.unique(plain, return_counts=True)
    alone = np.isin(plain, distinct[0][distinct[1] == 1]) & ~np.isin(plain, positives)
    positives, plain = positives[alone], plain[alone]
    assert len(positives) >= 4
    # the best negative of each positive becomes a copy of it: same text, same embedding
    copied = embeddings.copy()
    for row, negative in zip(positives, plain, strict=True):
        copied[negative] = embeddings[row]
        texts[negative] = texts[row].upper() + "."
    text_ids = caption_text_ids(texts)
    assert (text_ids[plain] == text_ids[positives]).all()
    fooled, similarity = mine_hard_negatives(positives, image_ids, copied, 60, seed=0)
    assert (fooled == plain).all() and np.allclose(similarity, 1.0)
    kept, similarity = mine_hard_negatives(
        positives, image_ids, copied, 60, seed=0, pool_text_ids=text_ids
    )
    assert (text_ids[kept] != text_ids[positives]).all() and (similarity < 0.999).all()


def test_candidate_sets_are_distinct_foreign_uniform_and_seeded():
    # images with 1 to 7 captions, interleaved in the pool as in a real captions file
    rng = np.random.default_rng(0)
    image_ids = rng.permutation(np.repeat(np.arange(400), rng.integers(1, 8, size=400)))
    positives = rng.choice(len(image_ids), size=300, replace=False)
    sets = list(candidate_sets(positives, image_ids, 200, seed=3, block_size=128))
    assert [offset for offset, _ in sets] == [0, 128, 256]
    drawn = np.concatenate([c for _, c in sets])
    assert drawn.shape == (300, 200)
    assert all(len(np.unique(row)) == 200 for row in drawn)
    assert (image_ids[drawn] != image_ids[positives][:, None]).all()
    # every caption of another image equally likely: hits per pool row match the binomial
    n_other = len(image_ids) - np.bincount(image_ids)[image_ids[positives]]
    expected = np.zeros(len(image_ids))
    for row, others in zip(positives, n_other, strict=True):
        expected += np.where(image_ids == image_ids[row], 0.0, 200 / others)
    hits = np.bincount(drawn.ravel(), minlength=len(image_ids))
    z = (hits - expected) / np.sqrt(expected * (1 - expected / 300))
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2
    # one call for every positive of a block (no rng.choice per positive), deterministic
    again = np.concatenate([c for _, c in candidate_sets(positives, image_ids, 200, 3, 128)])
    other = np.concatenate([c for _, c in candidate_sets(positives, image_ids, 200, 4, 128)])
    assert (again == drawn).all() and (other != drawn).any()
    with pytest.raises(TaskError, match="no caption of another image"):
        next(candidate_sets(np.array([0]), np.zeros(5, dtype=int), 10, 0))


def test_mining_does_not_depend_on_the_memory_budget(monkeypatch):
    embeddings = unit_vectors(500, 8, seed=2)
    image_ids = np.repeat(np.arange(100), 5)
    positives = np.arange(0, 500, 3)
    expected = mine_hard_negatives(positives, image_ids, embeddings, 50, seed=0)
    monkeypatch.setattr("vlprobe.tasks.SCORE_BUDGET", 1200)  # 2 positives per matrix product
    sliced = mine_hard_negatives(positives, image_ids, embeddings, 50, seed=0)
    assert (expected[0] == sliced[0]).all() and np.allclose(expected[1], sliced[1])


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


def test_random_negatives_are_other_images_captions_seeded_and_balanced(
    demo, pairs, sentence_model
):
    files, images = demo

    def drawn(seed):
        return build_caption_pairs(
            images,
            both(files.captions),
            both(files.captions),
            2,
            40,
            sentence_model,
            seed,
            ["random"],
        )

    random = drawn(0)
    negatives = random.filter(pl.col("label") == 0)
    assert (negatives["source_image_id"] != negatives["image_id"]).all()
    assert (negatives["negative_kind"] == "random").all()
    assert random.filter(pl.col("label") == 1)["negative_kind"].is_null().all()
    assert negatives["similarity"].is_not_null().all()  # recorded, to compare with hard ones
    # one negative per positive: balanced classes in each split
    counts = random.group_by("split", "label").len().sort("split", "label")["len"].to_list()
    assert counts == [
        negatives.filter(pl.col("split") == s).height for s in ("eval", "train") for _ in (0, 1)
    ]
    assert random.equals(drawn(0)) and not random.equals(drawn(1))
    # the same positives as the hard pairs; random negatives are far less similar
    hard = pairs.filter(pl.col("label") == 0)
    assert (hard["negative_kind"] == "hard").all()
    assert negatives["positive_caption_id"].to_list() == hard["positive_caption_id"].to_list()
    assert negatives["similarity"].mean() < hard["similarity"].mean() - 0.1


def test_each_caption_variant_takes_the_positives_and_its_kind_of_negative(
    demo, pairs, sentence_model
):
    """Pairs holding mined and random negatives: every positive once, one negative of each kind
    per positive, and each task balanced with its own kind (the hard rows those of hard-only)."""
    files, images = demo
    both_kinds = build_caption_pairs(
        images,
        both(files.captions),
        both(files.captions),
        2,
        40,
        sentence_model,
        0,
        ["hard", "random"],
    )
    n_positives = pairs.filter(pl.col("label") == 1).height
    assert (
        both_kinds.group_by("negative_kind")
        .len()
        .sort("negative_kind", nulls_last=True)["len"]
        .to_list()
        == [n_positives] * 3
    )
    for kind in ("hard", "random"):
        task, metadata = caption_task(both_kinds, "c", "{caption}", kind)
        assert metadata["negatives"] == kind
        assert task["label"].to_list().count(0) == task["label"].to_list().count(1) == n_positives
        assert set(task.filter(pl.col("label") == 0)["negative_kind"]) == {kind}
    # the audit histogram stacks the two kinds apart in each split
    spec = negative_similarity_histogram(both_kinds).to_dict()
    groups = {row["split"] for row in spec["datasets"][spec["data"]["name"]]}
    assert groups == {"train hard", "train random", "eval hard", "eval random"}
    hard, _ = caption_task(both_kinds, "c", "{caption}", "hard")
    only_hard, _ = caption_task(pairs, "c", "{caption}", "hard")
    columns = ["image_id", "caption_id", "label", "positive_caption_id", "similarity", "text"]
    assert hard.select(columns).equals(only_hard.select(columns))


def test_caption_prompt_fill(pairs):
    template = 'This image describes "{caption}". Is it right? Answer:'
    task, metadata = caption_task(pairs, "tao", template)
    assert task["sample_id"].n_unique() == task.height
    assert task["text"][0].startswith('This image describes "')
    assert metadata == {
        "kind": "caption",
        "prompt": "tao",
        "template": template,
        "negatives": "hard",
        "label_names": ["entailment"],
    }
    with pytest.raises(TaskError, match="placeholder"):
        caption_task(pairs, "tao", "no placeholder")
    with pytest.raises(TaskError, match="'tao': the caption pairs hold no random negatives"):
        caption_task(pairs, "tao", template, "random")


def test_too_few_captions_names_the_key(demo, sentence_model):
    files, images = demo
    with pytest.raises(TaskError, match="positives_per_image"):
        build_caption_pairs(
            images, both(files.captions), both(files.captions), 6, 40, sentence_model, 0
        )


def test_withcat_never_names_its_held_out_category(demo):
    files, images = demo
    rows = build_object_rows(images, both(files.instances))
    names = category_names(files.instances)
    task, _ = object_task(rows, "withcat", WITHCAT, "others", seed=0, names=names)
    expected_rows = sum(len(p) + 1 for p in rows["present"])
    assert task.height == expected_rows
    for text, held_out, present in task.select("text", "held_out", "present").iter_rows():
        listed = text.removeprefix(PROMPT).strip()
        assert not listed or listed.endswith(",")
        named = set(listed.removesuffix(",").split(", ")) if listed else set()
        assert held_out not in named
        assert named == set(present) - {held_out}
    nocat, _ = object_task(rows, "nocat", PROMPT, "none", seed=0, names=names)
    assert nocat.height == rows.height and (nocat["text"] == PROMPT).all()


def test_withcat_label_matrix_selects_one_row_per_image_and_category(demo):
    files, images = demo
    rows = build_object_rows(images, both(files.instances))
    names = category_names(files.instances)
    task, metadata = object_task(rows, "withcat", WITHCAT, "others", seed=0, names=names)
    assert metadata == {
        "kind": "object",
        "prompt": "withcat",
        "template": WITHCAT,
        "categories": "others",
        "label_names": names,
    }
    _, labels, mask, _ = label_matrix(task, metadata)
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
    task, _ = caption_task(pairs, "plain", "{caption}")
    parts = [task_part(task, k, 3, images["image_id"]) for k in range(3)]
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


@pytest.mark.slow
def test_real_coco_full_val_pool(coco_mini, sentence_model, all_cores):
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


def test_real_caption_pairs_record_each_negatives_source_and_audit_sample(
    coco_mini, sentence_model, tmp_path
):
    files = CocoFiles.in_directory(coco_mini)
    images, _ = build_images_table(both(files), {"train": 30, "eval": 10}, 0, "error")
    # the pool: the real captions of the 40 images and of 40 more (a few seconds to embed)
    doc = json.loads(files.captions.read_text())
    kept = set(images["image_id"]) | {i["id"] for i in doc["images"][:80]}
    doc["annotations"] = [c for c in doc["annotations"] if c["image_id"] in kept]
    pool = tmp_path / "captions_pool.json"
    pool.write_text(json.dumps(doc))
    pairs = build_caption_pairs(
        images, both(files.captions), both(pool), 1, 5000, sentence_model, 0
    )
    captions = doc["annotations"]
    image_of = {c["id"]: c["image_id"] for c in captions}
    negatives = pairs.filter(pl.col("label") == 0)
    # per negative: the caption it is, the image that caption belongs to, its similarity
    for caption_id, source, image_id in negatives.select(
        "caption_id", "source_image_id", "image_id"
    ).iter_rows():
        assert image_of[caption_id] == source != image_id
    assert negatives["similarity"].is_not_null().all()
    assert pairs.filter(pl.col("label") == 1)["similarity"].is_null().all()
    text_of_pair = dict(
        pairs.filter(pl.col("label") == 1).select("caption_id", "caption").iter_rows()
    )
    for positive_id, negative in negatives.select("positive_caption_id", "caption").iter_rows():
        assert negative.lower().rstrip(" .") != text_of_pair[positive_id].lower().rstrip(" .")

    examples = negative_examples(pairs, 12, seed=0)
    assert examples.height == 12
    assert examples.columns[:5] == ["image_id", "split", "positive", "negative", "similarity"]
    assert examples["similarity"].is_sorted(descending=True)
    assert examples.equals(negative_examples(pairs, 12, seed=0))
    assert not examples.equals(negative_examples(pairs, 12, seed=1))
    text_of = {c["id"]: c["caption"].strip() for c in captions}
    for positive, negative, pos_id, neg_id in examples.select(
        "positive", "negative", "positive_caption_id", "negative_caption_id"
    ).iter_rows():
        assert (positive, negative) == (text_of[pos_id], text_of[neg_id])
    assert negative_examples(pairs, 500, seed=0).height == negatives.height

    html = tmp_path / "examples.html"
    write_html_table(examples.with_columns(pl.lit("<b>&").alias("note")), html, "Hard negatives")
    page = html.read_text()
    assert page.count("<tr>") == 13 and "&lt;b&gt;&amp;" in page and "<b>&" not in page

    chart = negative_similarity_histogram(pairs, width=200, height=120)
    spec = chart.to_dict()
    counts = sum(row["negatives"] for row in spec["datasets"][spec["data"]["name"]])
    assert counts == negatives.height
    assert f"{negatives.height} negatives" in spec["title"]["subtitle"]
    save_chart(chart, tmp_path / "hist.html", tmp_path / "hist.png")
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"


# Tao et al. 2024's object prompts (PAPERS.md, verbatim): NoCat text, with categories after it
TAO_OBJECT_PROMPTS = {
    "": "This image contains the following types of objects:",
    "list_": "What types of objects are there here? Please list them:",
    "picture_": "Objects in this picture are:",
    "detailed_": (
        "There can be several types of objects in this image, including up to eighty kinds of "
        "objects. These objects can be any color, including red, green, blue, orange, yellow, "
        "purple, pink, and etc. Some of these objects can be very huge, while others can be very "
        "small. In the meantime, there are also many objects which can be overlapping with "
        "others. Please look carefully at the image for any detailed information. Now, you can "
        "write which type of objects you can find in the image:"
    ),
}
# coco-mini images with 1, 2 and 4 present categories: (image, held-out category) -> the list
WITHCAT_LISTS = {
    (54718, "elephant"): "",  # its only category held out: no list at all
    (54718, None): " elephant,",
    (802, "oven"): " refrigerator,",
    (5001, "person"): " scissors, handbag, bicycle,",
    (5001, None): " scissors, bicycle, person, handbag,",
}


@pytest.mark.parametrize("variant", list(TAO_OBJECT_PROMPTS))
def test_every_tao_object_prompt_reads_exactly_as_in_the_paper(real, variant):
    """The paper config's NoCat and WithCat variants of each wording, on real images with 0, 1
    and 3 other categories: every listed name followed by a comma, the last one included."""
    files, _, rows = real
    prompts = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["object"]["prompts"]
    names = category_names(files.instances)
    nocat_text = TAO_OBJECT_PROMPTS[variant]
    for kind in ("nocat", "withcat"):
        name = f"{variant}{kind}"
        entry = prompts[name]
        task, _ = object_task(rows, name, entry["template"], entry["categories"], 0, names)
        if kind == "nocat":
            assert entry["template"] == nocat_text
            assert (task["text"] == nocat_text).all()
            continue
        text_of = {(i, h): t for i, h, t in task.select("image_id", "held_out", "text").rows()}
        for key, listed in WITHCAT_LISTS.items():
            assert text_of[key] == nocat_text + listed, (name, key)


def test_withcat_lists_have_the_papers_form(real):
    files, _, rows = real
    names = category_names(files.instances)
    task, _ = object_task(rows, "w", f"{PROMPT} {{categories}}", "others", 0, names)
    text_of = {(i, h): t for i, h, t in task.select("image_id", "held_out", "text").rows()}
    assert text_of[(54718, "elephant")] == "This image contains the following types of objects:"
    assert text_of[(802, "oven")] == (
        "This image contains the following types of objects: refrigerator,"
    )
    assert text_of[(5001, "person")] == (
        "This image contains the following types of objects: scissors, handbag, bicycle,"
    )
    with pytest.raises(TaskError, match=r"\{categories\} placeholder goes with categories"):
        object_task(rows, "w", PROMPT, "others", 0, names)
    with pytest.raises(TaskError, match=r"\{categories\} placeholder goes with categories"):
        object_task(rows, "n", f"{PROMPT} {{categories}}", "none", 0, names)


def test_statement_rows_one_per_image_and_category(real):
    files, images, rows = real
    names = category_names(files.instances)
    task, meta = object_task(rows, "statement", STATEMENT, "self", seed=0, names=names)
    assert task.height == 80 * rows.height
    assert task.columns == ["sample_id", "image_id", "split", "text", "category", "present"]
    assert task.select("image_id", "category").is_unique().all()
    for text, category in task.select("text", "category").head(200).iter_rows():
        assert text == STATEMENT.replace("{category}", category)
    _, labels, mask, _ = label_matrix(task, meta)
    # each row belongs to its own category's task only, labelled with that category's presence
    assert (mask.sum(axis=1) == 1).all()
    own = np.array([names.index(c) for c in task["category"]])
    assert (mask.argmax(axis=1) == own).all()
    present = [c in p for c, p in task.select("category", "present").iter_rows()]
    assert (labels[np.arange(task.height), own] == np.array(present)).all()
    assert labels[~mask].sum() == 0
    # the same per-category labels as NoCat: one row per image and category
    nocat, nocat_meta = object_task(rows, "nocat", PROMPT, "none", seed=0, names=names)
    _, nocat_labels, _, _ = label_matrix(nocat, nocat_meta)
    assert labels.sum() == nocat_labels.sum()


def test_statement_rows_with_sampled_absent_categories(real):
    files, images, rows = real
    names = category_names(files.instances)
    task, metadata = object_task(rows, "s", STATEMENT, "self", 0, names, absent_per_image=3)
    assert metadata["absent_per_image"] == 3
    per_image = task.group_by("image_id").agg(
        pl.col("category"), pl.col("present").first(), pl.len().alias("rows")
    )
    for categories, present, n in per_image.select("category", "present", "rows").iter_rows():
        assert set(present) <= set(categories) and n == len(present) + 3
    assert task.height == sum(len(p) + 3 for p in rows["present"])
    assert task.equals(object_task(rows, "s", STATEMENT, "self", 0, names, absent_per_image=3)[0])
    other_seed, _ = object_task(rows, "s", STATEMENT, "self", 1, names, absent_per_image=3)
    assert not task.equals(other_seed)
    # absent categories vary from image to image
    absent = task.filter(~pl.col("category").is_in(pl.col("present")))
    assert absent["category"].n_unique() > 40
    none_absent, _ = object_task(rows, "s", STATEMENT, "self", 0, names, absent_per_image=0)
    assert none_absent.height == sum(len(p) for p in rows["present"])


def test_a_part_holds_the_same_images_in_every_task(real):
    """Parts split the study's images, not each task's: a task over fewer images keeps every
    image in the part it has in the others, so one job pools all prompts of its images."""
    files, images, rows = real
    names = category_names(files.instances)
    full, _ = object_task(rows, "n", "Objects:", "none", 0, names)
    fewer = full.filter(pl.col("image_id") % 3 != 0)
    for k in range(4):
        ids = set(task_part(full, k, 4, images["image_id"])["image_id"])
        assert set(task_part(fewer, k, 4, images["image_id"])["image_id"]) == {
            i for i in ids if i % 3 != 0
        }
    with pytest.raises(TaskError, match=r"task images \[\d+\] are not in the images table"):
        task_part(full, 0, 4, images["image_id"].head(len(images) - 1))


def test_statement_task_parts_and_extraction_samples(real):
    files, images, rows = real
    names = category_names(files.instances)
    task, _ = object_task(rows, "s", STATEMENT, "self", 0, names, absent_per_image=2)
    parts = [task_part(task, k, 4, images["image_id"]) for k in range(4)]
    assert sum(p.height for p in parts) == task.height
    image_sets = [set(p["image_id"]) for p in parts]
    assert all(not (a & b) for i, a in enumerate(image_sets) for b in image_sets[i + 1 :])
    samples = extraction_samples(task, images, files.images_dir, 2, 4)
    assert samples["sample_id"].to_list() == parts[2]["sample_id"].to_list()
    assert all(Path(p).is_file() for p in samples["image_path"].unique())
    assert samples["text"].str.starts_with(STATEMENT.split("{")[0]).all()


def test_category_placeholder_only_with_statement_prompts(real):
    files, _, rows = real
    names = category_names(files.instances)
    with pytest.raises(TaskError, match=r"'self' needs a \{category\} placeholder"):
        object_task(rows, "s", PROMPT, "self", seed=0, names=names)
    with pytest.raises(TaskError, match=r"placeholder needs categories 'self'"):
        object_task(rows, "nocat", STATEMENT, "none", seed=0, names=names)
    with pytest.raises(TaskError, match="absent_per_image"):
        object_task(rows, "withcat", WITHCAT, "others", seed=0, names=names, absent_per_image=3)
    with pytest.raises(TaskError, match="'s' needs the category names"):
        object_task(rows, "s", STATEMENT, "self", seed=0, names=[])


@pytest.mark.parametrize(
    ("prompt", "entry", "message"),
    [
        ("statement", {"template": "Objects:", "categories": "self"}, "self needs a {category}"),
        (
            "nocat",
            {"template": STATEMENT, "categories": "none"},
            "{category} needs categories: self",
        ),
        (
            "nocat",
            {"template": PROMPT, "categories": "none", "absent_per_image": 3},
            "only with categories: self",
        ),
        (
            "nocat",
            {"template": WITHCAT, "categories": "none"},
            "{categories} needs categories: others",
        ),
        (
            "withcat",
            {"template": PROMPT, "categories": "others"},
            "others needs a {categories} placeholder",
        ),
    ],
)
def test_config_schema_names_the_prompt_of_a_misplaced_placeholder(prompt, entry, message):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["object"]["prompts"]["statement"]["categories"] == "self"
    validate(copy.deepcopy(config), schema=str(ROOT / "workflow/schemas/config.schema.yaml"))
    config["object"]["prompts"][prompt] = entry
    with pytest.raises(WorkflowError) as error:
        validate(config, schema=str(ROOT / "workflow/schemas/config.schema.yaml"))
    text = str(error.value) + "".join(str(arg) for arg in error.value.args)
    assert f"['prompts']['{prompt}']" in text and message in text


def test_images_without_objects_are_kept_all_negative_and_counted(real, tmp_path, caplog):
    files, images, _ = real
    instances = json.loads(files.instances.read_text())
    empty = set(images.filter(pl.col("split") == "eval")["image_id"].head(2)) | set(
        images.filter(pl.col("split") == "train")["image_id"].head(3)
    )
    instances["annotations"] = [a for a in instances["annotations"] if a["image_id"] not in empty]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    with caplog.at_level(logging.INFO, logger="vlprobe.tasks"):
        rows = build_object_rows(images, both(path))
    assert rows.height == images.height
    assert set(rows.filter(pl.col("present").list.len() == 0)["image_id"]) == empty
    lines = [r.getMessage() for r in caplog.records if "without any annotated object" in r.message]
    assert len(lines) == 1 and "train 3 of 190" in lines[0] and "eval 2 of 48" in lines[0]
    names = category_names(path)
    nocat, metadata = object_task(rows, "nocat", PROMPT, "none", seed=0, names=names)
    _, labels, mask, _ = label_matrix(nocat, metadata)
    is_empty = nocat["image_id"].is_in(list(empty)).to_numpy()
    assert is_empty.sum() == 5
    assert labels[is_empty].sum() == 0 and mask[is_empty].all()
