"""First-token analysis (Tao et al. 2024, Table 1): what a model says right after the prompt.

For one category (``person`` in the paper), the evaluation rows of the object task that probe
it are run through the model and the first token it would generate greedily is recorded: the
argmax of the next-token logits after the prompt, which is what ``generate(max_new_tokens=1,
do_sample=False)`` returns. Under NoCat every evaluation image is such a row; under WithCat it is
the row that leaves the category out (positives) or the full-list row (negatives). The tables
count these tokens on positive and negative images, per prompt variant.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import torch

from vlprobe.data import load_image
from vlprobe.models import LoadedVLM, load_model
from vlprobe.storage import atomic_path, write_parquet
from vlprobe.tasks import label_matrix, read_task

log = logging.getLogger(__name__)

TOKEN_TABLE_SCHEMA = pl.Schema(
    {
        "model": pl.String,
        "prompt": pl.String,
        "category": pl.String,
        "images": pl.String,  # "positive" (category present) or "negative"
        "rank": pl.Int64,  # 1 = most frequent
        "token": pl.String,
        "count": pl.Int64,
        "fraction": pl.Float64,  # of the images of that prompt and kind
    }
)


def category_rows(task_path: str | os.PathLike, category: str) -> pl.DataFrame:
    """The evaluation rows of an object task that probe ``category``: sample_id, image_id,
    text, present (the category's label)."""
    task, metadata = read_task(task_path)
    if metadata["kind"] != "object":
        raise ValueError(f"{task_path}: first-token analysis needs an object task")
    sample_ids, labels, mask, names = label_matrix(task, metadata)
    if category not in names:
        raise ValueError(f"{task_path}: no category {category!r}; categories: {names[:5]}...")
    column = names.index(category)
    keep = mask[:, column] & (task["split"] == "eval").to_numpy()
    return task.filter(pl.Series(keep)).select(
        "sample_id", "image_id", "text", present=pl.Series(labels[keep, column].astype(bool))
    )


def greedy_first_tokens(
    model: LoadedVLM,
    image_paths: Sequence[str],
    texts: Sequence[str],
    batch_size: int,
    max_side: int | None = None,
) -> list[str]:
    """The first token the model generates greedily after each (image, prompt), decoded;
    images shrunk to a longer side of at most ``max_side`` as in extraction."""
    model.padding_side = "left"  # the last position is then every prompt's last token
    token_ids: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch_paths = image_paths[start : start + batch_size]
            images = [load_image(path, max_side) for path in batch_paths]
            inputs = model.inputs(images, texts[start : start + batch_size])
            logits = model.forward(inputs).logits[:, -1]
            token_ids += logits.argmax(dim=-1).tolist()
    return [model.tokenizer.decode([token_id]) for token_id in token_ids]


def token_frequencies(tokens: pl.DataFrame, top_k: int = 10) -> pl.DataFrame:
    """Top-``top_k`` tokens per (model, prompt, category, images) from rows with a ``token``.

    Ties in count are ordered by token text, so the table is deterministic.
    """
    keys = ["model", "prompt", "category", "images"]
    counted = tokens.group_by(*keys, "token").agg(pl.len().cast(pl.Int64).alias("count"))
    return (
        counted.with_columns(
            (pl.col("count") / pl.col("count").sum().over(keys)).alias("fraction"),
        )
        .sort(*keys, "count", "token", descending=[False] * len(keys) + [True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).over(keys).cast(pl.Int64).alias("rank"))
        .filter(pl.col("rank") <= top_k)
        .select(list(TOKEN_TABLE_SCHEMA))
    )


def run_first_token_job(
    model_name: str,
    model_entry: Mapping[str, Any],
    task_paths: Mapping[str, str | os.PathLike],
    images_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    category: str,
    out_path: str | os.PathLike,
    batch_size: int,
    device: str = "cpu",
    top_k: int = 10,
    max_side: int | None = None,
) -> pl.DataFrame:
    """First tokens of one model on every object prompt variant in ``task_paths`` (prompt
    name -> task table), written as the top-``top_k`` table to ``out_path`` (Parquet, and a
    ``.tsv`` beside it for the report)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # in chat format a chat model's first answer token follows the assistant turn's start
    model = load_model(model_name, {**model_entry, "generation_prompt": True}, device=device)
    files = pl.read_parquet(images_path).select("image_id", "file_name")
    frames = []
    for prompt, task_path in task_paths.items():
        rows = category_rows(task_path, category).join(files, on="image_id", how="left")
        paths = [str(Path(images_dir) / name) for name in rows["file_name"]]
        tokens = greedy_first_tokens(model, paths, rows["text"].to_list(), batch_size, max_side)
        log.info(
            "%s / %s: %d images (%d with %s), %d distinct first tokens",
            model_name,
            prompt,
            rows.height,
            int(rows["present"].sum()),
            category,
            len(set(tokens)),
        )
        frames.append(
            rows.select(
                model=pl.lit(model_name),
                prompt=pl.lit(prompt),
                category=pl.lit(category),
                images=pl.when(pl.col("present"))
                .then(pl.lit("positive"))
                .otherwise(pl.lit("negative")),
                token=pl.Series(tokens, dtype=pl.String),
            )
        )
    table = token_frequencies(pl.concat(frames), top_k)
    write_parquet(table, out_path)
    with atomic_path(Path(out_path).with_suffix(".tsv")) as tmp:
        # repr keeps leading spaces and newlines of tokens visible in the table
        table.with_columns(pl.col("token").map_elements(repr, return_dtype=pl.String)).write_csv(
            tmp, separator="\t"
        )
    return table
