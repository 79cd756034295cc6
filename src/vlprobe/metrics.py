"""Metrics: vectorised binary scores, bootstrap intervals, per-layer scores and the summary.

Counts are taken over the first axis (samples) of arrays of any further shape, e.g.
``[samples, layers, labels]``, so every (layer, label) probe is scored in one numpy call.
A boolean mask selects the samples that belong to each binary task.

Zero division gives 0.0 throughout (as sklearn's ``zero_division=0``): precision with no
predicted positives, recall with no true positives, F1 with neither, accuracy of an empty task,
and a macro average over no categories.

Per-layer scores (:func:`layer_scores`, computed in the probe job, where the eval predictions
are) are tidy rows ``(layer, metric, value, std, ci_low, ci_high, n_seeds)``:

- ``value`` is the mean over probe seeds of the metric on the evaluation rows, ``std`` the
  sample standard deviation over seeds (null with one seed);
- ``ci_low``/``ci_high`` a percentile bootstrap interval of that seed mean: evaluation *images*
  are resampled with replacement (all rows of an image go together: the WithCat rows of an
  image and the caption pairs of an image are not independent), the same resamples for every
  layer, seed, probe and control, so differences (selectivity) are paired;
- task metrics: caption ``accuracy, precision, recall, f1`` of the single label; object
  ``macro_f1, macro_precision, macro_recall`` over the *eligible* categories (at least one
  positive in the training rows and in the evaluation rows; fixed by the original sample, a
  resample without positives scores 0) and their count ``n_categories``;
- ``control_<m>``: the same metric of the control probes on the control task, and
  ``selectivity_<m>`` = ``<m>`` - ``control_<m>`` (per seed, then averaged; its interval comes
  from the paired resamples);
- ``collapsed``: the fraction of (eligible label, seed) probes whose predictions collapsed onto
  one class (see :func:`binary_scores`, ``balanced_majority_fraction``); the summary flags a
  layer (boolean column ``collapsed``) when that fraction is at least one half.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from vlprobe.storage import atomic_path, write_parquet

CAPTION_METRICS = ("accuracy", "precision", "recall", "f1")
OBJECT_METRICS = ("macro_f1", "macro_precision", "macro_recall", "n_categories")
# the metrics that have control and selectivity counterparts, per task kind
SCORED_METRICS = {
    "caption": CAPTION_METRICS,
    "object": ("macro_f1", "macro_precision", "macro_recall"),
}
# the metric that ranks layers (best_layers) and that the main figures show
HEADLINE_METRIC = {"caption": "accuracy", "object": "macro_f1"}
# a layer is flagged collapsed when at least this share of its probes collapsed
COLLAPSED_LAYER_FRACTION = 0.5

SCORE_SCHEMA = pl.Schema(
    {
        "layer": pl.Int16,
        "metric": pl.String,
        "value": pl.Float64,
        "std": pl.Float64,  # over probe seeds; null with a single seed
        "ci_low": pl.Float64,  # bootstrap interval of the seed mean; null without bootstrap
        "ci_high": pl.Float64,
        "n_seeds": pl.Int64,
    }
)
SUMMARY_KEYS = ("model", "task", "prompt", "pooling", "probe")
SUMMARY_SCHEMA = pl.Schema(
    {
        "model": pl.String,
        "task": pl.String,
        "prompt": pl.String,
        "pooling": pl.String,
        "probe": pl.String,
        **SCORE_SCHEMA,
        "collapsed": pl.Boolean,  # the layer's probes collapsed (same on all its metric rows)
    }
)


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
    """Accuracy, precision, recall, F1 (positive class) and two collapse measures per task.

    ``majority_fraction`` is the share of predictions in the most predicted class.
    ``balanced_majority_fraction`` is the same share after weighting both true classes equally:
    with q the mean of the predicted-positive rates among true positives and among true
    negatives (over the classes present), it is max(q, 1 - q). On a balanced task the two are
    equal; on a rare category a good probe predicts mostly negatives (majority_fraction near 1)
    yet keeps a low balanced value, while a probe answering "no" to everything scores 1.0.
    """
    predicted_pos = counts.tp + counts.fp
    n_neg = counts.fp + counts.tn
    rates = safe_divide(counts.tp, counts.n_pos) + safe_divide(counts.fp, n_neg)
    classes = (counts.n_pos > 0).astype(np.float64) + (n_neg > 0)
    balanced = safe_divide(rates, classes)
    return {
        "accuracy": safe_divide(counts.tp + counts.tn, counts.n),
        "precision": safe_divide(counts.tp, predicted_pos),
        "recall": safe_divide(counts.tp, counts.n_pos),
        "f1": safe_divide(2 * counts.tp, 2 * counts.tp + counts.fp + counts.fn),
        "majority_fraction": safe_divide(
            np.maximum(predicted_pos, counts.n - predicted_pos), counts.n
        ),
        "balanced_majority_fraction": np.where(
            classes > 0, np.maximum(balanced, 1 - balanced), 0.0
        ),
    }


def task_scores(
    counts: BinaryCounts,
    task_kind: Literal["caption", "object"],
    eligible: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Task-level metrics from counts whose last axis is the label: ``[..., labels] -> [...]``.

    caption: the metrics of the single label. object: macro averages over the ``eligible``
    labels (boolean ``[labels]``, default all), 0.0 where none is eligible.
    """
    scores = binary_scores(counts)
    if task_kind == "caption":
        return {metric: scores[metric][..., 0] for metric in CAPTION_METRICS}
    if task_kind != "object":
        raise ValueError(f"task_kind must be 'caption' or 'object', got {task_kind!r}")
    n_labels = counts.tp.shape[-1]
    keep = np.ones(n_labels, bool) if eligible is None else np.asarray(eligible, bool)
    n_eligible = int(keep.sum())
    return {
        f"macro_{metric}": (
            scores[metric][..., keep].mean(axis=-1)
            if n_eligible
            else np.zeros(scores[metric].shape[:-1])
        )
        for metric in ("f1", "precision", "recall")
    }


def group_index(groups: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Dense index ``[rows]`` of each row's resampling unit (its image); rows alone if None."""
    if groups is None:
        return np.arange(n_rows)
    groups = np.asarray(groups)
    if groups.shape != (n_rows,):
        raise ValueError(f"groups: expected shape ({n_rows},), got {groups.shape}")
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def bootstrap_weights(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each unit is drawn in each of ``n_boot`` resamples: ``[n_boot, n_units]``.

    Each resample draws ``n_units`` units uniformly with replacement.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = (draws + np.arange(n_boot)[:, None] * n_units).reshape(-1)
    counts = np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units)
    return counts.astype(np.float32)


class _Resampler:
    """Sums of per-row indicators over the original sample and over bootstrap resamples.

    Rows are first summed per unit (image); a resample's sum is then a weighted sum over units,
    so B resamples of any number of indicator columns cost one ``[B, units] @ [units, C]``.
    """

    def __init__(self, unit: np.ndarray, n_boot: int, seed: int):
        order = np.argsort(unit, kind="stable")
        sorted_units = unit[order]
        self.order = order
        self.starts = np.flatnonzero(np.r_[True, sorted_units[1:] != sorted_units[:-1]])
        self.n_units = len(self.starts)
        self.weights = bootstrap_weights(self.n_units, n_boot, seed) if n_boot else None

    def sums(self, indicator: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``indicator [rows, ...]`` to (sum ``[...]``, resample sums ``[B, ...]`` or None)."""
        shape = indicator.shape[1:]
        flat = indicator.reshape(len(indicator), -1)[self.order].astype(np.float32)
        per_unit = np.add.reduceat(flat, self.starts, axis=0) if len(flat) else flat
        total = per_unit.sum(axis=0, dtype=np.float64).reshape(shape)
        if self.weights is None:
            return total, None
        resampled = (self.weights @ per_unit).astype(np.float64)
        return total, resampled.reshape(len(self.weights), *shape)


def _counts(tp, predicted_pos, n_pos, n) -> BinaryCounts:
    fp = predicted_pos - tp
    fn = n_pos - tp
    return BinaryCounts(tp=tp, fp=fp, fn=fn, tn=n - predicted_pos - fn)


def _mean_std(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over axis 0 (seeds); std NaN with one seed."""
    mean = per_seed.mean(axis=0)
    if len(per_seed) < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, per_seed.std(axis=0, ddof=1)


# indicator columns per bootstrap chunk (bounds memory: rows x columns float32)
_BOOT_CHUNK_CELLS = 32_000_000


def layer_scores(
    task_kind: Literal["caption", "object"],
    layers: Sequence[int],
    y_true: np.ndarray,
    mask: np.ndarray,
    predictions: np.ndarray,
    eligible: np.ndarray,
    *,
    control_labels: np.ndarray | None = None,
    control_predictions: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    collapse_threshold: float = 0.95,
) -> pl.DataFrame:
    """Per-layer scores with seed spread and bootstrap intervals (see the module docstring).

    ``y_true``/``mask`` ``[rows, labels]`` are the evaluation labels and task membership;
    ``predictions`` ``[seeds, rows, layers, labels]`` the 0/1 predictions of the probes;
    ``eligible`` ``[labels]`` the labels that enter macro averages and the collapse fraction;
    ``control_labels [seeds, rows, labels]`` and ``control_predictions`` (same shape as
    ``predictions``) the control task and its probes' predictions; ``groups [rows]`` the unit
    resampled by the bootstrap (image ids; None resamples rows). ``n_boot`` = 0 gives no
    intervals. Returns a frame of :data:`SCORE_SCHEMA`.
    """
    if task_kind not in SCORED_METRICS:
        raise ValueError(f"task_kind must be 'caption' or 'object', got {task_kind!r}")
    predictions = np.asarray(predictions, bool)
    n_seeds, n_rows, n_layers, n_labels = predictions.shape
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer numbers for {n_layers} layers of predictions")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    has_control = control_predictions is not None
    if has_control and control_labels is None:
        raise ValueError("control_predictions need control_labels")
    mask = np.asarray(mask, bool)
    truth = np.asarray(y_true).astype(bool) & mask
    eligible = np.asarray(eligible, bool)
    resampler = _Resampler(group_index(groups, n_rows), n_boot, seed)

    n_total, n_total_boot = resampler.sums(mask)  # [K], [B, K]
    n_pos, n_pos_boot = resampler.sums(truth)
    if has_control:
        control_truth = np.asarray(control_labels).astype(bool) & mask  # [S, n, K]
        c_pos, c_pos_boot = resampler.sums(np.moveaxis(control_truth, 0, 1))  # [S, K]
        control_predictions = np.asarray(control_predictions, bool)

    quantiles = ((1 - confidence) / 2, 1 - (1 - confidence) / 2)
    rows: list[tuple] = []
    chunk = max(1, _BOOT_CHUNK_CELLS // max(1, n_rows * n_seeds * n_labels * 4))
    for start in range(0, n_layers, chunk):
        part = slice(start, min(start + chunk, n_layers))
        per_seed: dict[str, np.ndarray] = {}  # metric -> [S, Lc]
        resampled: dict[str, np.ndarray] = {}  # metric -> [B, S, Lc]

        def score(
            prefix,
            predicted,
            truth_rows,
            positives,
            positives_boot,
            per_seed=per_seed,
            resampled=resampled,
        ):
            # predicted [S, n, Lc, K]; truth_rows broadcastable to it
            hits = np.moveaxis(predicted & truth_rows & mask[None, :, None, :], 0, 1)
            said = np.moveaxis(predicted & mask[None, :, None, :], 0, 1)
            tp, tp_boot = resampler.sums(hits)  # [S, Lc, K], [B, S, Lc, K]
            pp, pp_boot = resampler.sums(said)
            point = _counts(tp, pp, positives, n_total)
            for metric, values in task_scores(point, task_kind, eligible).items():
                per_seed[prefix + metric] = values
            if tp_boot is not None:
                boot = _counts(tp_boot, pp_boot, positives_boot, n_total_boot[:, None, None, :])
                for metric, values in task_scores(boot, task_kind, eligible).items():
                    resampled[prefix + metric] = values
            return point

        real = score(
            "",
            predictions[:, :, part],
            truth[None, :, None, :],
            n_pos,
            None if n_pos_boot is None else n_pos_boot[:, None, None, :],
        )
        if task_kind == "object":
            per_seed["n_categories"] = np.full(per_seed["macro_f1"].shape, float(eligible.sum()))
        if has_control:
            score(
                "control_",
                control_predictions[:, :, part],
                control_truth[:, :, None, :],
                c_pos[:, None, :],
                None if c_pos_boot is None else c_pos_boot[:, :, None, :],
            )
            for metric in SCORED_METRICS[task_kind]:
                per_seed[f"selectivity_{metric}"] = per_seed[metric] - per_seed[f"control_{metric}"]
                if metric in resampled:
                    resampled[f"selectivity_{metric}"] = (
                        resampled[metric] - resampled[f"control_{metric}"]
                    )
        # the collapsed fraction, pooled over (eligible label, seed) probes: [Lc]
        flags = binary_scores(real)["balanced_majority_fraction"] >= collapse_threshold
        keep = eligible if task_kind == "object" else np.arange(n_labels) == 0
        share = flags[..., keep].mean(axis=(0, 2)) if keep.any() else np.zeros(flags.shape[1])

        per_seed["collapsed"] = share[None]  # one pooled value, no spread over seeds
        for metric, values in per_seed.items():
            mean, std = _mean_std(values)
            if metric in resampled:
                low, high = np.quantile(resampled[metric].mean(axis=1), quantiles, axis=0)
            else:
                low = high = np.full_like(mean, np.nan)
            for j, layer in enumerate(layers[part]):
                rows.append(
                    (layer, metric, mean[j], std[j], low[j], high[j], n_seeds),
                )
    frame = pl.DataFrame(rows, schema=SCORE_SCHEMA, orient="row")
    order = _metric_order(task_kind, has_control)
    return frame.with_columns(
        pl.col(name).fill_nan(None) for name in ("std", "ci_low", "ci_high")
    ).sort("layer", pl.col("metric").replace_strict(order, default=len(order)))


def _metric_order(task_kind: str, has_control: bool) -> dict[str, int]:
    names = list(CAPTION_METRICS if task_kind == "caption" else OBJECT_METRICS)
    if has_control:
        names += [f"control_{m}" for m in SCORED_METRICS[task_kind]]
        names += [f"selectivity_{m}" for m in SCORED_METRICS[task_kind]]
    names.append("collapsed")
    return {name: rank for rank, name in enumerate(names)}


def _with_keys(frame: pl.DataFrame, key: Mapping[str, str]) -> pl.DataFrame:
    return frame.select(*(pl.lit(value).alias(name) for name, value in key.items()), pl.all())


def summarise(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The tidy summary: one row per (model, task, prompt, pooling, probe, layer, metric).

    Each table is a score table, written by the probe job next to its probe table: the key
    columns and :data:`SCORE_SCHEMA`. Columns: :data:`SUMMARY_SCHEMA`; ``collapsed`` flags every
    row of a layer whose collapsed fraction is at least :data:`COLLAPSED_LAYER_FRACTION`.
    """
    if not tables:
        raise ValueError("no score tables to summarise")
    groups = []
    for table in tables:
        missing = [key for key in SUMMARY_KEYS if key not in table.columns]
        if missing:
            raise ValueError(f"table lacks key columns {missing}")
        for key, group in table.group_by(SUMMARY_KEYS, maintain_order=True):
            named = dict(zip(SUMMARY_KEYS, key, strict=True))
            scores = group.select(*(pl.col(c) for c in SCORE_SCHEMA if c in group.columns))
            scores = scores.with_columns(
                pl.lit(None, dtype).alias(name)
                for name, dtype in SCORE_SCHEMA.items()
                if name not in scores.columns
            ).select(list(SCORE_SCHEMA))
            groups.append(_with_keys(scores, named).cast(dict(SCORE_SCHEMA)))
    summary = pl.concat(groups, how="vertical")
    flagged = (
        summary.filter(pl.col("metric") == "collapsed")
        .select(*SUMMARY_KEYS, "layer", (pl.col("value") >= COLLAPSED_LAYER_FRACTION).alias("c"))
        .unique(subset=[*SUMMARY_KEYS, "layer"], keep="first")
    )
    summary = (
        summary.join(flagged, on=[*SUMMARY_KEYS, "layer"], how="left")
        .with_columns(pl.col("c").fill_null(False).alias("collapsed"))
        .drop("c")
    )
    return summary.select(list(SUMMARY_SCHEMA)).sort(*SUMMARY_KEYS, "layer", maintain_order=True)


def write_summary(
    table_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike
) -> pl.DataFrame:
    """Gather score tables into the tidy summary and write it atomically."""
    summary = summarise([pl.read_parquet(path) for path in table_paths])
    write_parquet(summary, out_path)
    return summary


def best_layers(summary: pl.DataFrame, metrics: Mapping[str, str] | None = None) -> pl.DataFrame:
    """The best layer of each (model, task, prompt, pooling, probe), with its interval.

    The best layer maximises the task's headline metric (``metrics``: task kind -> metric,
    default :data:`HEADLINE_METRIC`: caption accuracy, object macro_f1); ties go to the
    shallower layer. Columns: the keys, ``metric``, ``layer``, ``relative_depth`` (layer over
    the model's deepest layer in the summary, i.e. its number of decoder layers when every
    hidden state was probed), ``value``, ``std``, ``ci_low``, ``ci_high``, ``collapsed``,
    ``n_layers`` (layers compared) and ``near_best_layers``: the layers whose value lies within
    the best layer's interval (at least its ``ci_low``), the best included - a sharp peak has
    one, a plateau many.
    """
    chosen = dict(HEADLINE_METRIC if metrics is None else metrics)
    missing = [c for c in (*SUMMARY_KEYS, "layer", "metric", "value") if c not in summary.columns]
    if missing:
        raise ValueError(f"summary frame lacks columns {missing}")
    frame = summary.with_columns(
        *(
            pl.lit(None, pl.Float64).alias(c)
            for c in ("std", "ci_low", "ci_high")
            if c not in summary.columns
        ),
        *([] if "collapsed" in summary.columns else [pl.lit(False).alias("collapsed")]),
    )
    depth = frame.group_by("model").agg(pl.col("layer").max().alias("deepest"))
    wanted = frame.filter(
        pl.col("metric") == pl.col("task").replace_strict(chosen, default=None)
    ).join(depth, on="model")
    if wanted.is_empty():
        raise ValueError(f"summary frame has no rows of the metrics {chosen}")
    ranked = wanted.sort(
        *SUMMARY_KEYS,
        pl.col("value"),
        pl.col("layer"),
        descending=[
            *([False] * len(SUMMARY_KEYS)),
            True,
            False,
        ],
    )
    best = ranked.group_by(SUMMARY_KEYS, maintain_order=True).first()
    near = (
        wanted.join(
            best.select(
                *SUMMARY_KEYS, pl.col("ci_low").alias("best_low"), pl.col("value").alias("best")
            ),
            on=list(SUMMARY_KEYS),
        )
        .filter(pl.col("value") >= pl.coalesce("best_low", "best"))
        .group_by(SUMMARY_KEYS)
        .agg(pl.col("layer").sort().cast(pl.Int64).alias("near_best_layers"))
    )
    counts = wanted.group_by(SUMMARY_KEYS).agg(pl.col("layer").n_unique().alias("n_layers"))
    return (
        best.join(near, on=list(SUMMARY_KEYS))
        .join(counts, on=list(SUMMARY_KEYS))
        .select(
            *SUMMARY_KEYS,
            "metric",
            pl.col("layer").cast(pl.Int16),
            (pl.col("layer") / pl.col("deepest").clip(lower_bound=1)).alias("relative_depth"),
            "value",
            "std",
            "ci_low",
            "ci_high",
            "collapsed",
            pl.col("n_layers").cast(pl.Int64),
            "near_best_layers",
        )
        .sort(*SUMMARY_KEYS)
    )


def write_best_layers(summary_path: str | os.PathLike, out_path: str | os.PathLike) -> pl.DataFrame:
    """:func:`best_layers` of a written summary, written atomically as Parquet or, for a
    ``.tsv`` path, as a tab-separated table (``near_best_layers`` comma-joined) that
    ``snakemake --report`` shows as a table."""
    best = best_layers(pl.read_parquet(summary_path))
    if Path(out_path).suffix == ".tsv":
        flat = best.with_columns(
            pl.col("near_best_layers").cast(pl.List(pl.String)).list.join(","),
            pl.col(pl.Float64).round(4),
        )
        with atomic_path(out_path) as tmp:
            flat.write_csv(tmp, separator="\t")
    else:
        write_parquet(best, out_path)
    return best
