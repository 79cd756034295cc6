"""One layer-shard: probes of every kind and seed with their controls, scored, as the probe job."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from vlprobe.metrics import (
    COLLAPSED_LAYER_FRACTION,
    binary_counts,
    binary_scores,
    layer_scores,
)
from vlprobe.probes.base import (
    FittedProbes,
)
from vlprobe.probes.controls import control_labels
from vlprobe.settings import (
    AnyProbeConfig,
    EvaluationConfig,
    probe_settings,
)
from vlprobe.storage import read_features, shard_path, write_parquet
from vlprobe.tasks import label_matrix, read_task

log = logging.getLogger(__name__)


# the probe table: one row per (layer, label, seed) of a layer-shard
PROBE_TABLE_SCHEMA = pl.Schema(
    {
        "layer": pl.Int16,
        "label": pl.String,
        "seed": pl.Int64,
        "n_train": pl.Int64,  # training rows in the label's task, validation slice included
        "n_train_pos": pl.Int64,
        "n_eval": pl.Int64,
        "n_eval_pos": pl.Int64,
        "accuracy": pl.Float64,
        "precision": pl.Float64,
        "recall": pl.Float64,
        "f1": pl.Float64,
        "majority_fraction": pl.Float64,
        "balanced_majority_fraction": pl.Float64,
        "collapsed": pl.Boolean,  # balanced_majority_fraction >= the collapse threshold
        # the control probe of the same (layer, label, seed) on the control task; null if off
        "control_accuracy": pl.Float64,
        "control_precision": pl.Float64,
        "control_recall": pl.Float64,
        "control_f1": pl.Float64,
        "best_epoch": pl.Int64,  # 1-based epoch (logreg: iteration) whose weights were kept
        "train_loss": pl.List(pl.Float64),  # per epoch run (logreg: the objective per iteration)
        "val_loss": pl.List(pl.Float64),  # empty when there is no validation slice
    }
)


@dataclass(frozen=True)
class ProbeResults:
    """What one layer-shard's probes give: the probe table and the per-layer scores."""

    table: pl.DataFrame  # PROBE_TABLE_SCHEMA: one row per (layer, label, seed)
    scores: pl.DataFrame  # metrics.SCORE_SCHEMA: one row per (layer, metric)


def _check_inputs(
    split: str,
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    n_layers: int,
    n_labels: int,
) -> None:
    if features.ndim != 3 or features.shape[1] != n_layers:
        raise ValueError(
            f"x_{split}: expected [samples, {n_layers} layers, hidden], got {features.shape}"
        )
    expected = (features.shape[0], n_labels)
    for what, array in (("y", labels), ("m", mask)):
        if array.shape != expected:
            raise ValueError(f"{what}_{split}: expected shape {expected}, got {array.shape}")


def _curves_per_probe(curves: np.ndarray, lengths: np.ndarray | None = None) -> list[list[float]]:
    """``[epochs, layers, labels]`` to one list per (layer, label), layer-major.

    ``lengths [layers, labels]`` trims each list (logreg probes stop at different iterations).
    """
    n_epochs, n_layers, n_labels = curves.shape
    lists = curves.reshape(n_epochs, n_layers * n_labels).T.tolist()
    if lengths is None:
        return lists
    return [
        values[:length] for values, length in zip(lists, lengths.reshape(-1).tolist(), strict=True)
    ]


def probe_layers(
    x_train: np.ndarray,
    y_train: np.ndarray,
    m_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    m_eval: np.ndarray,
    layers: Sequence[int],
    label_names: Sequence[str],
    config: AnyProbeConfig,
    evaluation: EvaluationConfig | None = None,
    eval_groups: np.ndarray | None = None,
    task_kind: Literal["caption", "object"] | None = None,
    device: str = "cpu",
) -> ProbeResults:
    """Fit the probes of one layer-shard (every seed, with controls) and score them; the fits
    run on ``device`` where the probe kind does (see the settings' ``on_device``).

    ``x_*`` are features ``[samples, len(layers), hidden]``; ``y_*`` 0/1 labels and ``m_*``
    task membership ``[samples, len(label_names)]`` (a row outside a label's mask counts for
    nothing in that label's probe, neither in training nor in scoring). ``eval_groups``
    ``[eval samples]`` (image ids) are the units the bootstrap resamples (None: rows).
    ``task_kind`` decides the per-layer metrics (default: caption for one label, else object).
    """
    evaluation = evaluation or EvaluationConfig()
    n_layers, n_labels = len(layers), len(label_names)
    _check_inputs("train", x_train, y_train, m_train, n_layers, n_labels)
    _check_inputs("eval", x_eval, y_eval, m_eval, n_layers, n_labels)
    if len(x_train) < 2:
        raise ValueError(f"need at least 2 training rows, got {len(x_train)}")
    if x_eval.shape[2] != x_train.shape[2]:
        raise ValueError(f"hidden size differs: train {x_train.shape[2]}, eval {x_eval.shape[2]}")
    task_kind = task_kind or ("caption" if n_labels == 1 else "object")
    seeds = config.seeds
    m_train = np.asarray(m_train, dtype=bool)
    m_eval = np.asarray(m_eval, dtype=bool)
    control = evaluation.control
    control_train = [control_labels(y_train, m_train, s, 0) for s in seeds] if control else []
    control_eval = [control_labels(y_eval, m_eval, s, 1) for s in seeds] if control else []

    # fits: a seed-independent probe (one optimum) is fitted once, holding the real probes and
    # every seed's control; the others train once per seed, real and control labels side by
    # side (every seed in one batched model on CUDA: probes.minibatch.batches_seeds)
    predictions, control_predictions, fits = [], [], []
    if config.seed_independent:
        labels = np.concatenate([y_train, *control_train], axis=1)
        masks = np.concatenate([m_train] * (1 + len(control_train)), axis=1)
        probes = config.fit(x_train, labels, masks, seeds[0], 1 + len(control_train), device)
        decided = _decisions(probes, x_eval, layers)
        for index in range(len(seeds)):
            predictions.append(decided[..., :n_labels])
            fits.append((probes, slice(0, n_labels)))
            if control:
                columns = slice((index + 1) * n_labels, (index + 2) * n_labels)
                control_predictions.append(decided[..., columns])
    else:
        n_sets = 2 if control else 1
        labels = [
            np.concatenate([y_train, *control_train[index : index + 1]], axis=1)
            for index in range(len(seeds))
        ]
        masks = [np.concatenate([m_train] * n_sets, axis=1)] * len(seeds)
        for probes in config.fit_seeds(x_train, labels, masks, seeds, n_sets, device):
            decided = _decisions(probes, x_eval, layers)
            predictions.append(decided[..., :n_labels])
            fits.append((probes, slice(0, n_labels)))
            if control:
                control_predictions.append(decided[..., n_labels:])

    truth = np.asarray(y_eval)
    eval_mask = m_eval[:, None, :]
    train_positive = m_train & (np.asarray(y_train) == 1)
    per_label = {  # [labels] -> repeated over layers
        "n_train": m_train.sum(axis=0),
        "n_train_pos": train_positive.sum(axis=0),
        "n_eval": m_eval.sum(axis=0),
        "n_eval_pos": (m_eval & (truth == 1)).sum(axis=0),
    }
    layer_of_row = np.repeat(np.asarray(layers), n_labels)
    label_of_row = np.tile(np.arange(n_labels), n_layers)
    tables = []
    for index, seed in enumerate(seeds):
        scores = binary_scores(binary_counts(truth[:, None, :], predictions[index], eval_mask))
        collapsed = scores["balanced_majority_fraction"] >= evaluation.collapse_threshold
        if control:
            control_counts = binary_counts(
                control_eval[index][:, None, :], control_predictions[index], eval_mask
            )
            control_scores = binary_scores(control_counts)
        probes, columns = fits[index]
        lengths = None if probes.curve_lengths is None else probes.curve_lengths[:, columns]
        tables.append(
            pl.DataFrame(
                {
                    "layer": layer_of_row,
                    "label": [label_names[k] for k in label_of_row],
                    "seed": np.full(n_layers * n_labels, seed),
                    **{name: values[label_of_row] for name, values in per_label.items()},
                    **{name: values.reshape(-1) for name, values in scores.items()},
                    "collapsed": collapsed.reshape(-1),
                    **{
                        f"control_{name}": (
                            control_scores[name].reshape(-1)
                            if control
                            else np.full(n_layers * n_labels, None)
                        )
                        for name in ("accuracy", "precision", "recall", "f1")
                    },
                    "best_epoch": probes.best_epoch[:, columns].reshape(-1),
                    "train_loss": _curves_per_probe(probes.train_loss[..., columns], lengths),
                    "val_loss": _curves_per_probe(probes.val_loss[..., columns]),
                },
                schema=PROBE_TABLE_SCHEMA,
            )
        )
    table = pl.concat(tables)

    eligible = (per_label["n_train_pos"] > 0) & (per_label["n_eval_pos"] > 0)
    scores = layer_scores(
        task_kind,
        list(layers),
        truth,
        m_eval,
        np.stack(predictions),
        eligible,
        control_labels=np.stack(control_eval) if control else None,
        control_predictions=np.stack(control_predictions) if control else None,
        groups=eval_groups,
        n_boot=evaluation.bootstrap,
        confidence=evaluation.confidence,
        seed=evaluation.seed,
        collapse_threshold=evaluation.collapse_threshold,
    )
    return ProbeResults(table=table, scores=scores)


def _decisions(probes: FittedProbes, x_eval: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """0/1 predictions ``[eval rows, layers, labels]``; non-finite logits name their layers."""
    logits = probes.logits(x_eval)
    bad_layers = ~np.isfinite(logits).all(axis=(0, 2))
    if bad_layers.any():
        bad = np.asarray(layers)[bad_layers].tolist()
        raise ValueError(f"non-finite eval features at layers {bad}")
    return logits > 0


def run_probe_job(
    task_path: str | os.PathLike,
    part_dirs: Sequence[str | os.PathLike],
    shard: tuple[int, int],
    pooling: str,
    probe: str,
    probe_config: Mapping[str, Any],
    model: str,
    out_path: str | os.PathLike,
    evaluation: Mapping[str, Any] | None = None,
    scores_path: str | os.PathLike | None = None,
    device: str = "cpu",
) -> ProbeResults:
    """One probe job: the probes of one (model, task, pooling, probe, layer-shard), fitted on
    ``device`` (cpu, cuda, or auto: CUDA if there is a GPU).

    Reads the shard's activations from every extraction part, aligns them with the task's
    labels by sample_id, trains on the train split, evaluates on the eval split (the bootstrap
    resamples eval images), and writes the probe table, and the per-layer scores to
    ``scores_path`` if given, each with the columns model, task, prompt, pooling, probe in
    front. ``probe`` names the config entry ``probes.<probe>``; ``evaluation`` is the config
    section of :class:`EvaluationConfig` (None: its defaults). Layers whose probes collapsed
    are logged as warnings.
    """
    config = probe_settings(probe, probe_config)
    evaluation_config = EvaluationConfig.from_dict(evaluation or {})
    task, metadata = read_task(task_path)
    sample_ids, labels, mask, names = label_matrix(task, metadata)
    paths = [shard_path(part, shard) for part in part_dirs]
    train = (task["split"] == "train").to_numpy()
    evaluate = (task["split"] == "eval").to_numpy()
    # train rows, then eval rows, each in task order: both splits are views of one array
    order = np.concatenate([np.flatnonzero(train), np.flatnonzero(evaluate)])
    n_train = int(train.sum())
    layers, features = read_features(paths, pooling, sample_ids[order])
    expected = list(range(shard[0], shard[1] + 1))
    if layers.tolist() != expected:
        raise ValueError(f"{paths[0]}: layers {layers.tolist()}, expected {expected}")
    labels, mask = labels[order], mask[order]
    results = probe_layers(
        features[:n_train],
        labels[:n_train],
        mask[:n_train],
        features[n_train:],
        labels[n_train:],
        mask[n_train:],
        expected,
        names,
        config,
        evaluation_config,
        eval_groups=task["image_id"].to_numpy()[order[n_train:]],
        task_kind=metadata["kind"],
        device=_resolved(device),
    )
    keys = {
        "model": model,
        "task": metadata["kind"],
        "prompt": metadata["prompt"],
        "pooling": pooling,
        "probe": probe,
    }

    def with_keys(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(*(pl.lit(v).alias(k) for k, v in keys.items()), pl.all())

    _log_collapsed(results.scores, keys)
    table, scores = with_keys(results.table), with_keys(results.scores)
    write_parquet(table, out_path)
    if scores_path is not None:
        write_parquet(scores, scores_path)
    return ProbeResults(table=table, scores=scores)


def _resolved(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _log_collapsed(scores: pl.DataFrame, keys: Mapping[str, str]) -> None:
    where = "/".join(keys.values())
    for layer, fraction in (
        scores.filter(pl.col("metric") == "collapsed").select("layer", "value").iter_rows()
    ):
        if fraction >= COLLAPSED_LAYER_FRACTION:
            log.warning(
                "%s: layer %d collapsed: %.0f%% of its probes predict (almost) one class only",
                where,
                layer,
                100 * fraction,
            )
        elif fraction > 0:
            log.info("%s: layer %d: %.0f%% of its probes collapsed", where, layer, 100 * fraction)
