"""Metrics: vectorised binary scores of probe predictions and per-layer summaries.

Counts are taken over the first axis (samples) of arrays of any further shape, e.g.
``[samples, layers, labels]``, so every (layer, label) probe is scored in one numpy call.
A boolean mask selects the samples that belong to each binary task.

Zero division gives 0.0 throughout (as sklearn's ``zero_division=0``): precision with no
predicted positives, recall with no true positives, F1 with neither, accuracy of an empty task,
and a macro average over no categories.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from vlprobe.storage import write_parquet

CAPTION_METRICS = ("accuracy", "precision", "recall", "f1")
OBJECT_METRICS = ("macro_f1", "macro_precision", "macro_recall", "n_categories")


@dataclass(frozen=True)
class BinaryCounts:
    """Confusion counts of binary predictions, one entry per task (shape of the trailing axes)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def n(self) -> np.ndarray:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def n_pos(self) -> np.ndarray:
        return self.tp + self.fn


def binary_counts(
    y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray | None = None
) -> BinaryCounts:
    """Confusion counts summed over axis 0 of broadcastable 0/1 arrays.

    ``mask`` (broadcastable too) keeps the samples where it is true; None keeps all.
    """
    truth = np.asarray(y_true).astype(bool)
    predicted = np.asarray(y_pred).astype(bool)
    truth, predicted = np.broadcast_arrays(truth, predicted)
    keep = (
        np.ones_like(truth)
        if mask is None
        else np.broadcast_to(np.asarray(mask, bool), truth.shape)
    )
    return BinaryCounts(
        tp=np.sum(truth & predicted & keep, axis=0),
        fp=np.sum(~truth & predicted & keep, axis=0),
        fn=np.sum(truth & ~predicted & keep, axis=0),
        tn=np.sum(~truth & ~predicted & keep, axis=0),
    )


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio as float64, 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def binary_scores(counts: BinaryCounts) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall, F1 (positive class) and majority_fraction per task.

    ``majority_fraction`` is the share of predictions in the most predicted class: 1.0 flags a
    probe that collapsed onto one answer.
    """
    predicted_pos = counts.tp + counts.fp
    return {
        "accuracy": safe_divide(counts.tp + counts.tn, counts.n),
        "precision": safe_divide(counts.tp, predicted_pos),
        "recall": safe_divide(counts.tp, counts.n_pos),
        "f1": safe_divide(2 * counts.tp, 2 * counts.tp + counts.fp + counts.fn),
        "majority_fraction": safe_divide(
            np.maximum(predicted_pos, counts.n - predicted_pos), counts.n
        ),
    }


def layer_summary(
    probe_table: pl.DataFrame, task_kind: Literal["caption", "object"]
) -> pl.DataFrame:
    """Tidy per-layer scores ``(layer, metric, value)`` from a probe table.

    caption: accuracy, precision, recall and f1 of the single label.
    object: macro_f1, macro_precision and macro_recall over the categories with at least one
    positive in both the training and the evaluation rows, and their count as ``n_categories``.
    A table holding several probe seeds gives the mean over seeds.
    """
    if task_kind == "caption":
        labels = probe_table["label"].unique()
        if labels.len() != 1:
            raise ValueError(f"caption probe table must hold one label, found {labels.to_list()}")
        per_seed = probe_table.select("layer", "seed", *CAPTION_METRICS)
        metrics = CAPTION_METRICS
    elif task_kind == "object":
        eligible = (pl.col("n_train_pos") > 0) & (pl.col("n_eval_pos") > 0)
        per_seed = probe_table.group_by("layer", "seed").agg(
            # a mean over no categories is null; fill_null gives the documented 0.0
            *(
                pl.col(metric).filter(eligible).mean().fill_null(0.0).alias(f"macro_{metric}")
                for metric in ("f1", "precision", "recall")
            ),
            eligible.sum().cast(pl.Float64).alias("n_categories"),
        )
        metrics = OBJECT_METRICS
    else:
        raise ValueError(f"task_kind must be 'caption' or 'object', got {task_kind!r}")
    return (
        per_seed.group_by("layer")
        .agg(pl.col(metric).cast(pl.Float64).mean() for metric in metrics)
        .unpivot(index="layer", on=list(metrics), variable_name="metric", value_name="value")
        .with_columns(pl.col("layer").cast(pl.Int16))
        .sort("layer", pl.col("metric").cast(pl.Enum(list(metrics))))
    )


SUMMARY_KEYS = ("model", "task", "prompt", "pooling", "probe")


def summarise(probe_tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The tidy summary: one row per (model, task, prompt, pooling, probe, layer, metric)."""
    probes = pl.concat(probe_tables, how="vertical")
    groups = []
    for key, group in probes.group_by(SUMMARY_KEYS, maintain_order=True):
        scores = layer_summary(group, key[1])
        groups.append(
            scores.select(
                *(pl.lit(v).alias(k) for k, v in zip(SUMMARY_KEYS, key, strict=True)), pl.all()
            )
        )
    return pl.concat(groups).sort(*SUMMARY_KEYS, "layer")


def write_summary(
    probe_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike
) -> pl.DataFrame:
    """Gather probe tables into the tidy summary and write it atomically."""
    summary = summarise([pl.read_parquet(path) for path in probe_paths])
    write_parquet(summary, out_path)
    return summary
