"""Probes: batched linear probes over every layer of a layer-shard and every label at once.

One model holds a weight ``[layers, hidden, labels]`` and a bias ``[layers, labels]``; a
mini-batch ``[batch, layers, hidden]`` gives logits ``[batch, layers, labels]`` through one
einsum. The loss is the sum over (layer, label) of each probe's own masked mean binary
cross-entropy, and Adam and weight decay act per parameter, so every (layer, label) probe
follows exactly the gradient it would follow alone: batching only saves time. Dropout masks
and mini-batch order come from one seeded ``torch.Generator`` and do not depend on the labels.

Features are standardised per layer and hidden unit with the mean and standard deviation of
the training rows. Early stopping holds out a seeded validation slice of the training rows:
each (layer, label) probe keeps the weights of its best validation-loss epoch and stops
counting after ``patience`` epochs without improvement; training ends when every probe has
stopped (or after ``epochs``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from vlprobe.metrics import binary_counts, binary_scores
from vlprobe.storage import read_activations, shard_path, write_parquet
from vlprobe.tasks import label_matrix, read_task

# rows per chunk when a pass over all features is needed (statistics, scoring)
_CHUNK_ROWS = 1024
# standard deviations below this are constant features: left unscaled instead of blown up
_MIN_STD = 1e-6


# the probe table: one row per (layer, label) of a layer-shard
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
        "best_epoch": pl.Int64,  # 1-based epoch whose weights were kept
        "train_loss": pl.List(pl.Float64),  # per epoch run, this (layer, label) probe
        "val_loss": pl.List(pl.Float64),  # empty when val_fraction is 0
    }
)


@dataclass(frozen=True)
class ProbeConfig:
    """Hyperparameters of the linear probe (config key ``probes.linear``)."""

    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 256
    dropout: float = 0.1
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = type(field.default)  # int settings take ints; float settings take either
            wanted = int if kind is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                hint = " (YAML reads 1e-3 as text; write 1.0e-3)" if isinstance(value, str) else ""
                raise ValueError(
                    f"probe setting {field.name!r} must be {kind.__name__}, got {value!r}{hint}"
                )
        checks = {
            "lr": self.lr > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "dropout": 0 <= self.dropout < 1,
            "weight_decay": self.weight_decay >= 0,
            "val_fraction": 0 <= self.val_fraction < 1,
            "patience": self.patience >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"probe setting {name!r} out of range: {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> ProbeConfig:
        """Build from a plain mapping; an unknown key raises ValueError naming it."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown probe setting(s) {unknown}; known settings: {known}")
        return cls(**settings)


@dataclass(frozen=True)
class LinearProbes:
    """Fitted probes of one layer-shard: weights act on standardised features.

    ``best_epoch`` is 1-based (``val_loss[best_epoch - 1]`` is the probe's best); the loss
    curves ``[epochs_run, layers, labels]`` are masked mean cross-entropies, the training one
    with dropout active and NaN where a label has no rows.
    """

    weight: torch.Tensor  # [layers, hidden, labels]
    bias: torch.Tensor  # [layers, labels]
    feature_mean: torch.Tensor  # [layers, hidden]
    feature_std: torch.Tensor  # [layers, hidden]
    best_epoch: np.ndarray  # [layers, labels]
    train_loss: np.ndarray  # [epochs_run, layers, labels]
    val_loss: np.ndarray  # [epochs_run, layers, labels]; zero epochs long without validation

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits ``[samples, layers, labels]`` for raw features ``[samples, layers, hidden]``."""
        parts = []
        with torch.no_grad():
            for start in range(0, len(features), _CHUNK_ROWS):
                chunk = features[start : start + _CHUNK_ROWS]
                batch = _standardised(chunk, self.feature_mean, self.feature_std)
                parts.append(_linear(batch, self.weight, self.bias).numpy())
        if not parts:
            return np.zeros((0, *self.bias.shape), dtype=np.float32)
        return np.concatenate(parts)


def _linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.einsum("blh,lhk->blk", features, weight) + bias


def _standardised(features: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised copy of ``features`` (the caller's array, maybe read-only, is not touched)."""
    batch = torch.from_numpy(np.array(features, dtype=np.float32))
    return batch.sub_(mean).div_(std)


def feature_stats(features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer, per-unit mean and standard deviation ``[layers, hidden]`` (two passes, float64).

    Raises ValueError naming the layer positions whose features are not finite.
    """
    n_rows = len(features)
    total = np.zeros(features.shape[1:], dtype=np.float64)
    for start in range(0, n_rows, _CHUNK_ROWS):
        total += features[start : start + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n_rows
    squares = np.zeros_like(mean)
    for start in range(0, n_rows, _CHUNK_ROWS):
        squares += np.square(features[start : start + _CHUNK_ROWS] - mean).sum(axis=0)
    std = np.sqrt(squares / n_rows)
    bad = ~np.isfinite(std).all(axis=1)
    if bad.any():
        raise ValueError(f"non-finite features at layer positions {np.flatnonzero(bad).tolist()}")
    std[std < _MIN_STD] = 1.0
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def _masked_bce_sums(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sum over rows of each (layer, label) cross-entropy, rows outside the mask left out."""
    losses = F.binary_cross_entropy_with_logits(
        logits, labels[:, None, :].expand_as(logits), reduction="none"
    )
    # where (not multiply) so that NaN or junk labels of masked-out rows cannot leak in
    return torch.where(mask[:, None, :], losses, 0.0).sum(dim=0)


def fit_linear_probes(
    features: np.ndarray, labels: np.ndarray, mask: np.ndarray, config: ProbeConfig
) -> LinearProbes:
    """Train one probe per (layer, label) on ``features [N, L, H]``, ``labels``/``mask [N, K]``."""
    n_rows, n_layers, hidden = features.shape
    n_labels = labels.shape[1]
    generator = torch.Generator().manual_seed(config.seed)
    feature_mean, feature_std = feature_stats(features)
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.float32).copy())
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=bool).copy())

    order = torch.randperm(n_rows, generator=generator)
    n_val = min(round(config.val_fraction * n_rows), n_rows - 1)
    val_rows, fit_rows = np.sort(order[:n_val].numpy()), order[n_val:]
    val_features = _standardised(features[val_rows], feature_mean, feature_std)
    val_labels, val_mask = label_tensor[val_rows], mask_tensor[val_rows]
    val_counts = val_mask.sum(dim=0)
    has_val = (val_counts > 0).expand(n_layers, n_labels)

    weight = torch.zeros(n_layers, hidden, n_labels, requires_grad=True)
    bias = torch.zeros(n_layers, n_labels, requires_grad=True)
    optimizer = torch.optim.Adam(
        [
            {"params": [weight], "weight_decay": config.weight_decay},
            {"params": [bias], "weight_decay": 0.0},  # the bias is not regularised
        ],
        lr=config.lr,
    )
    best_weight, best_bias = weight.detach().clone(), bias.detach().clone()
    best_val = torch.full((n_layers, n_labels), float("inf"))
    best_epoch = torch.zeros(n_layers, n_labels, dtype=torch.int64)
    epochs_since_best = torch.zeros(n_layers, n_labels, dtype=torch.int64)
    train_curve, val_curve = [], []

    for epoch in range(1, config.epochs + 1):
        loss_sums = torch.zeros(n_layers, n_labels)
        row_counts = torch.zeros(n_labels)
        shuffled = fit_rows[torch.randperm(len(fit_rows), generator=generator)]
        for batch_rows in shuffled.split(config.batch_size):
            rows = np.sort(batch_rows.numpy())  # sorted rows read memory in order
            # inverted dropout: the 1 / (1 - p) scale folded into the standardisation
            batch = _standardised(
                np.take(features, rows, axis=0), feature_mean, feature_std * (1 - config.dropout)
            )
            if config.dropout > 0:
                drop = torch.rand(batch.shape, generator=generator) < config.dropout
                batch.masked_fill_(drop, 0.0)
            batch_mask = mask_tensor[rows]
            sums = _masked_bce_sums(_linear(batch, weight, bias), label_tensor[rows], batch_mask)
            counts = batch_mask.sum(dim=0)
            # each probe's own mean over its rows in the batch; summed so probes stay independent
            loss = (sums / counts.clamp(min=1)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sums += sums.detach()
            row_counts += counts
        train_curve.append((loss_sums / row_counts).numpy())  # NaN for labels without rows

        with torch.no_grad():
            if n_val:
                val_sums = _masked_bce_sums(
                    _linear(val_features, weight, bias), val_labels, val_mask
                )
                val_loss = val_sums / val_counts
                val_curve.append(val_loss.numpy())
            else:
                val_loss = torch.full((n_layers, n_labels), float("nan"))
            patient = epochs_since_best < config.patience
            # probes without validation rows keep their latest weights
            improved = ~has_val | (patient & (val_loss < best_val))
            best_weight = torch.where(improved[:, None, :], weight, best_weight)
            best_bias = torch.where(improved, bias, best_bias)
            best_val = torch.where(improved, val_loss, best_val)
            best_epoch[improved] = epoch
            epochs_since_best = torch.where(improved, 0, epochs_since_best + 1)
        if has_val.any() and not (has_val & (epochs_since_best < config.patience)).any():
            break

    return LinearProbes(
        weight=best_weight,
        bias=best_bias,
        feature_mean=feature_mean,
        feature_std=feature_std,
        best_epoch=best_epoch.numpy(),
        train_loss=np.stack(train_curve).astype(np.float64),
        val_loss=np.array(val_curve, dtype=np.float64).reshape(-1, n_layers, n_labels),
    )


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


def _curves_per_probe(curves: np.ndarray) -> list[list[float]]:
    """``[epochs, layers, labels]`` to one list per (layer, label), layer-major."""
    n_epochs, n_layers, n_labels = curves.shape
    return curves.reshape(n_epochs, n_layers * n_labels).T.tolist()


def train_and_evaluate(
    x_train: np.ndarray,
    y_train: np.ndarray,
    m_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    m_eval: np.ndarray,
    layers: Sequence[int],
    label_names: Sequence[str],
    config: ProbeConfig,
) -> pl.DataFrame:
    """Fit the probes of one layer-shard on the training rows and score them on the eval rows.

    ``x_*`` are features ``[samples, len(layers), hidden]``; ``y_*`` 0/1 labels and ``m_*``
    task membership ``[samples, len(label_names)]`` (a row outside a label's mask counts for
    nothing in that label's probe, neither in training nor in scoring). Returns the probe table:
    one row per (layer, label); see :data:`PROBE_TABLE_SCHEMA`.
    """
    n_layers, n_labels = len(layers), len(label_names)
    _check_inputs("train", x_train, y_train, m_train, n_layers, n_labels)
    _check_inputs("eval", x_eval, y_eval, m_eval, n_layers, n_labels)
    if len(x_train) < 2:
        raise ValueError(f"need at least 2 training rows, got {len(x_train)}")
    if x_eval.shape[2] != x_train.shape[2]:
        raise ValueError(f"hidden size differs: train {x_train.shape[2]}, eval {x_eval.shape[2]}")

    probes = fit_linear_probes(x_train, y_train, m_train, config)
    eval_logits = probes.logits(x_eval)
    bad_layers = ~np.isfinite(eval_logits).all(axis=(0, 2))
    if bad_layers.any():
        bad = np.asarray(layers)[bad_layers].tolist()
        raise ValueError(f"non-finite eval features at layers {bad}")
    eval_mask = np.asarray(m_eval, dtype=bool)[:, None, :]
    counts = binary_counts(np.asarray(y_eval)[:, None, :], eval_logits > 0, eval_mask)
    scores = binary_scores(counts)  # each [layers, labels]

    train_mask = np.asarray(m_train, dtype=bool)
    train_positive = train_mask & (np.asarray(y_train) == 1)
    per_label = {  # [labels] -> repeated over layers
        "n_train": train_mask.sum(axis=0),
        "n_train_pos": train_positive.sum(axis=0),
        "n_eval": counts.n[0],
        "n_eval_pos": counts.n_pos[0],
    }
    layer_of_row = np.repeat(np.asarray(layers), n_labels)
    label_of_row = np.tile(np.arange(n_labels), n_layers)
    return pl.DataFrame(
        {
            "layer": layer_of_row,
            "label": [label_names[k] for k in label_of_row],
            "seed": np.full(n_layers * n_labels, config.seed),
            **{name: values[label_of_row] for name, values in per_label.items()},
            **{name: values.reshape(-1) for name, values in scores.items()},
            "best_epoch": probes.best_epoch.reshape(-1),
            "train_loss": _curves_per_probe(probes.train_loss),
            "val_loss": _curves_per_probe(probes.val_loss),
        },
        schema=PROBE_TABLE_SCHEMA,
    )


def run_probe_job(
    task_path: str | os.PathLike,
    part_dirs: Sequence[str | os.PathLike],
    shard: tuple[int, int],
    pooling: str,
    probe: str,
    probe_config: Mapping[str, Any],
    model: str,
    out_path: str | os.PathLike,
) -> pl.DataFrame:
    """One probe job: the probes of one (model, task, pooling, probe kind, layer-shard).

    Reads the shard's activations from every extraction part, aligns them with the task's
    labels by sample_id, trains on the train split, evaluates on the eval split, and writes
    the probe table with the columns model, task, prompt, pooling, probe in front.
    """
    if probe != "linear":
        raise ValueError(f"probes.{probe}: unknown probe kind; supported: linear")
    config = ProbeConfig.from_dict(probe_config)
    task, metadata = read_task(task_path)
    sample_ids, labels, mask, names = label_matrix(task, metadata)
    paths = [shard_path(part, shard) for part in part_dirs]
    feature_ids, layers, features = read_activations(paths, pooling)
    expected = list(range(shard[0], shard[1] + 1))
    if layers.tolist() != expected:
        raise ValueError(f"{paths[0]}: layers {layers.tolist()}, expected {expected}")
    row_of = {int(sample_id): row for row, sample_id in enumerate(feature_ids)}
    missing = [int(i) for i in sample_ids if int(i) not in row_of]
    if missing:
        raise ValueError(f"{task_path}: samples {missing[:5]} have no activations in {paths[0]}")
    features = features[[row_of[int(i)] for i in sample_ids]]
    train = (task["split"] == "train").to_numpy()
    evaluate = (task["split"] == "eval").to_numpy()
    table = train_and_evaluate(
        features[train],
        labels[train],
        mask[train],
        features[evaluate],
        labels[evaluate],
        mask[evaluate],
        expected,
        names,
        config,
    )
    table = table.select(
        pl.lit(model).alias("model"),
        pl.lit(metadata["kind"]).alias("task"),
        pl.lit(metadata["prompt"]).alias("prompt"),
        pl.lit(pooling).alias("pooling"),
        pl.lit(probe).alias("probe"),
        pl.all(),
    )
    write_parquet(table, out_path)
    return table
