"""Probes: batched probes over every layer of a layer-shard and every label at once.

Three kinds, chosen by the config key ``probes.<name>`` (``kind`` inside the entry, default the
name itself); each kind's settings are a dataclass built from a dict, unknown keys named:

``linear`` (:class:`LinearConfig`)
    The compact-model study's probe: dropout on the inputs, Adam, binary cross-entropy,
    mini-batches, early stopping on a validation slice. One model holds a weight
    ``[layers, hidden, labels]``; a mini-batch ``[batch, layers, hidden]`` gives logits
    ``[batch, layers, labels]`` through one einsum. The loss is the sum over (layer, label) of
    each probe's own masked mean cross-entropy, and Adam and weight decay act per parameter, so
    every (layer, label) probe follows exactly the gradient it would follow alone.
``logreg`` (:class:`LogregConfig`)
    L2-regularised logistic regression with sklearn's objective: per probe,
    ``mean cross-entropy + ||w||^2 / (2 c n)`` (n the probe's training rows; the bias is not
    penalised), fitted on all training rows (no validation slice) to a gradient tolerance.
    Full-batch and deterministic; see :func:`fit_logreg_probes` for the solver.
``mlp`` (:class:`MlpConfig`)
    One hidden ReLU layer, trained like ``linear``. Independent networks per (layer, label)
    would need a first-layer weight ``[layers, labels, hidden, units]`` (29 x 80 x 1536 x 128
    floats = 1.8 GB, and 80x the compute of one network), so by default (``share_hidden:
    true``) each layer has one network per *label set* whose hidden layer is shared by the
    set's labels, with one output per label: for the caption task (one label) this is exactly
    one MLP per layer; for the object task it is a multi-label MLP per layer, a different
    model from 80 separate MLPs (categories share learnt features). The control labels form
    their own set with its own network, so they never share units with the real labels.
    ``share_hidden: false`` trains one network per (layer, label) (memory and time grow with
    the labels). Early stopping acts per (layer, network).

Features are standardised per layer and hidden unit with the mean and standard deviation of
the training rows.

Seeds (``seeds: [0, 1, 2]``): ``linear`` and ``mlp`` train once per seed (initialisation,
mini-batch order, dropout masks and the validation slice follow the seed); ``logreg`` has a
unique optimum, so its probes are the same for every seed (zero spread) and only its control
task changes with the seed. The probe table holds one row per (layer, label, seed).

Control task (:func:`control_labels`): per seed, each label's labels are permuted at random
within each *stratum*, a stratum being the rows of one split (train or eval) that belong to
that label's task (mask true). Each label keeps its exact number of positives in each split;
any relation between inputs and labels is gone. The same kind of probe, with the same
settings and seed, is trained on the control training labels (in the same batch as the real
probes: they are independent) and scored on the control evaluation labels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from vlprobe.metrics import (
    COLLAPSED_LAYER_FRACTION,
    SCORE_SCHEMA,
    binary_counts,
    binary_scores,
    layer_scores,
)
from vlprobe.settings import (
    AnyProbeConfig,
    EvaluationConfig,
    LinearConfig,
    LogregConfig,
    MlpConfig,
    probe_settings,
)
from vlprobe.storage import read_activations, shard_path, write_parquet
from vlprobe.tasks import label_matrix, read_task

log = logging.getLogger(__name__)

# rows per chunk when a pass over all features is needed (statistics, scoring)
_CHUNK_ROWS = 1024
# values per chunk when scoring (bounds the float32 buffer: 4 bytes each)
_CHUNK_VALUES = 1 << 22
# standard deviations below this are constant features: left unscaled instead of blown up
_MIN_STD = 1e-6


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


def _derived_seed(*key: int) -> int:
    """A 63-bit seed derived from integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------- shared parts


@dataclass(frozen=True)
class FittedProbes:
    """Fitted probes of one layer-shard; parameters act on standardised features.

    ``best_epoch`` is 1-based (``val_loss[best_epoch - 1]`` is the probe's best; logreg: the
    iterations run); the curves ``[epochs_run, layers, labels]`` are masked mean
    cross-entropies (training ones with dropout active, NaN where a label has no rows; logreg:
    the regularised objective per iteration).
    """

    network: _Network
    feature_mean: torch.Tensor  # [layers, hidden]
    feature_std: torch.Tensor  # [layers, hidden]
    best_epoch: np.ndarray  # [layers, labels]
    train_loss: np.ndarray  # [epochs_run, layers, labels]
    val_loss: np.ndarray  # [epochs_run, layers, labels]; zero epochs long without validation

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits ``[samples, layers, labels]`` for raw features ``[samples, layers, hidden]``."""
        n_layers, n_labels = self.feature_mean.shape[0], self.best_epoch.shape[1]
        out = np.zeros((len(features), n_layers, n_labels), dtype=np.float32)
        rows = max(1, min(len(features), _CHUNK_ROWS, _CHUNK_VALUES // max(1, features[0].size)))
        buffer = torch.empty(rows, *features.shape[1:])  # reused: fresh buffers page-fault
        with torch.no_grad():
            for start in range(0, len(features), rows):
                chunk = features[start : start + rows]
                batch = buffer[: len(chunk)].copy_(torch.from_numpy(_writeable(chunk)))
                batch.sub_(self.feature_mean).div_(self.feature_std)
                out[start : start + len(chunk)] = self.network.forward(batch).numpy()
        return out

    @property
    def weight(self) -> torch.Tensor:  # linear and logreg probes: [layers, hidden, labels]
        return self.network.weight.detach()

    @property
    def bias(self) -> torch.Tensor:  # [layers, labels]
        return self.network.bias.detach()


def _linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.einsum("blh,lhk->blk", features, weight) + bias


def _float32_copy(array: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor copied from ``array`` (any float dtype, strided, read-only).

    torch converts float16 with vector instructions, several times faster than numpy.
    """
    if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
        array = array.copy()
    out = torch.empty(array.shape, dtype=torch.float32)
    return out.copy_(torch.from_numpy(array))


def _standardised(features: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised copy of ``features`` (the caller's array, maybe read-only, is not touched)."""
    return _float32_copy(features).sub_(mean).div_(std)


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
    _check_finite(std)
    std[std < _MIN_STD] = 1.0
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def _check_finite(std: np.ndarray) -> None:
    bad = ~np.isfinite(std).all(axis=1)
    if bad.any():
        raise ValueError(f"non-finite features at layer positions {np.flatnonzero(bad).tolist()}")


def _masked_bce_sums(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Sum over rows of each (layer, label) cross-entropy, rows outside the mask left out."""
    losses = F.binary_cross_entropy_with_logits(
        logits, labels[:, None, :].expand_as(logits), reduction="none"
    )
    # where (not multiply) so that NaN or junk labels of masked-out rows cannot leak in
    return torch.where(mask[:, None, :], losses, 0.0).sum(dim=0)


# ----------------------------------------------------------------------------- networks


class _Network:
    """Parameters of all probes of a shard; ``unit_of_label`` maps labels to stopping units.

    Early stopping keeps the best epoch per (layer, unit): the unit is the label for linear
    probes and the network for MLPs.
    """

    unit_of_label: np.ndarray
    params: list[torch.Tensor]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, L, labels]
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict]:
        raise NotImplementedError

    def expand(self, per_unit: torch.Tensor, index: int) -> torch.Tensor:
        """A ``[layers, units]`` boolean broadcast to the shape of parameter ``index``."""
        raise NotImplementedError

    def keep_best(self, best: list[torch.Tensor], improved: torch.Tensor) -> list[torch.Tensor]:
        return [
            torch.where(self.expand(improved, i), param.detach(), kept)
            for i, (param, kept) in enumerate(zip(self.params, best, strict=True))
        ]

    def load(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for param, value in zip(self.params, values, strict=True):
                param.copy_(value)


class _LinearNetwork(_Network):
    def __init__(self, n_layers: int, hidden: int, n_labels: int):
        self.weight = torch.zeros(n_layers, hidden, n_labels, requires_grad=True)
        self.bias = torch.zeros(n_layers, n_labels, requires_grad=True)
        self.params = [self.weight, self.bias]
        self.unit_of_label = np.arange(n_labels)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return _linear(batch, self.weight, self.bias)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [
            {"params": [self.weight], "weight_decay": weight_decay},
            {"params": [self.bias], "weight_decay": 0.0},  # the bias is not regularised
        ]

    def expand(self, per_unit: torch.Tensor, index: int) -> torch.Tensor:
        return per_unit[:, None, :] if index == 0 else per_unit


class _MlpNetwork(_Network):
    """Per layer, ``groups`` networks ``hidden -> units -> outputs``; logits group-major.

    Shared mode: one group per label set (real, control), each with one output per label.
    Independent mode: one group per (label set, label), each with one output.
    """

    def __init__(
        self,
        n_layers: int,
        hidden: int,
        n_sets: int,
        labels_per_set: int,
        config: MlpConfig,
        seed: int,
    ):
        per_set = 1 if config.share_hidden else labels_per_set
        outputs = labels_per_set if config.share_hidden else 1
        units = config.hidden_units
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        for label_set in range(n_sets):
            # each label set draws from its own generator: the real probes' initial weights
            # do not depend on whether control probes are trained alongside
            generator = torch.Generator().manual_seed(_derived_seed(seed, 1, label_set))
            shapes = [
                ((n_layers, per_set, hidden, units), hidden),
                ((n_layers, per_set, units), hidden),
                ((n_layers, per_set, units, outputs), units),
                ((n_layers, per_set, outputs), units),
            ]
            for part, (shape, fan_in) in zip(parts, shapes, strict=True):
                bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
                part.append((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        self.w1, self.b1, self.w2, self.b2 = (
            torch.cat(part, dim=1).requires_grad_() for part in parts
        )
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.unit_of_label = np.arange(n_sets * labels_per_set) // outputs

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(torch.einsum("blh,lghj->blgj", batch, self.w1) + self.b1)
        out = torch.einsum("blgj,lgjk->blgk", hidden, self.w2) + self.b2
        return out.reshape(out.shape[0], out.shape[1], -1)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [
            {"params": [self.w1, self.w2], "weight_decay": weight_decay},
            {"params": [self.b1, self.b2], "weight_decay": 0.0},
        ]

    def expand(self, per_unit: torch.Tensor, index: int) -> torch.Tensor:
        shape = per_unit.shape + (1,) * (self.params[index].dim() - 2)
        return per_unit.reshape(shape)


# ----------------------------------------------------------------------------- mini-batch training


def _fit_minibatch(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: LinearConfig,
    seed: int,
    network: _Network,
) -> FittedProbes:
    """Adam on mini-batches with early stopping per (layer, stopping unit); see module doc.

    Dropout masks and mini-batch order come from one generator seeded by ``seed`` and do not
    depend on the labels.
    """
    n_rows, n_layers, _ = features.shape
    n_labels = labels.shape[1]
    generator = torch.Generator().manual_seed(seed)
    feature_mean, feature_std = feature_stats(features)
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.float32).copy())
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=bool).copy())
    unit_of_label = torch.from_numpy(network.unit_of_label)
    n_units = int(unit_of_label.max()) + 1
    # [labels, units] one-hot: per-unit validation loss = mean of its labels' losses
    membership = F.one_hot(unit_of_label, n_units).to(torch.float32)

    order = torch.randperm(n_rows, generator=generator)
    n_val = min(round(config.val_fraction * n_rows), n_rows - 1)
    val_rows, fit_rows = np.sort(order[:n_val].numpy()), order[n_val:]
    val_features = _standardised(features[val_rows], feature_mean, feature_std)
    val_labels, val_mask = label_tensor[val_rows], mask_tensor[val_rows]
    val_counts = val_mask.sum(dim=0)
    label_has_val = (val_counts > 0).to(torch.float32)
    has_val = (label_has_val @ membership > 0).expand(n_layers, n_units)

    optimizer = torch.optim.Adam(network.param_groups(config.weight_decay), lr=config.lr)
    best = [param.detach().clone() for param in network.params]
    best_val = torch.full((n_layers, n_units), float("inf"))
    best_epoch = torch.zeros(n_layers, n_units, dtype=torch.int64)
    epochs_since_best = torch.zeros(n_layers, n_units, dtype=torch.int64)
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
            sums = _masked_bce_sums(network.forward(batch), label_tensor[rows], batch_mask)
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
                val_sums = _masked_bce_sums(network.forward(val_features), val_labels, val_mask)
                label_loss = val_sums / val_counts
                val_curve.append(label_loss.numpy())
                unit_loss = (torch.nan_to_num(label_loss, nan=0.0) @ membership) / (
                    label_has_val @ membership
                ).clamp(min=1)
            else:
                unit_loss = torch.full((n_layers, n_units), float("nan"))
            patient = epochs_since_best < config.patience
            # probes without validation rows keep their latest weights
            improved = ~has_val | (patient & (unit_loss < best_val))
            best = network.keep_best(best, improved)
            best_val = torch.where(improved, unit_loss, best_val)
            best_epoch[improved] = epoch
            epochs_since_best = torch.where(improved, 0, epochs_since_best + 1)
        if has_val.any() and not (has_val & (epochs_since_best < config.patience)).any():
            break

    network.load(best)
    return FittedProbes(
        network=network,
        feature_mean=feature_mean,
        feature_std=feature_std,
        best_epoch=best_epoch[:, unit_of_label].numpy(),
        train_loss=np.stack(train_curve).astype(np.float64),
        val_loss=np.array(val_curve, dtype=np.float64).reshape(-1, n_layers, n_labels),
    )


def fit_linear_probes(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: LinearConfig,
    seed: int | None = None,
) -> FittedProbes:
    """Train a linear probe per (layer, label): ``features [N, L, H]``, ``labels``/``mask [N, K]``.

    ``seed`` defaults to the first of ``config.seeds``.
    """
    _, n_layers, hidden = features.shape
    network = _LinearNetwork(n_layers, hidden, labels.shape[1])
    seed = config.seeds[0] if seed is None else seed
    return _fit_minibatch(features, labels, mask, config, seed, network)


def fit_mlp_probes(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: MlpConfig,
    seed: int | None = None,
    n_sets: int = 1,
) -> FittedProbes:
    """Train MLP probes; ``labels [N, n_sets * K]`` hold ``n_sets`` label sets side by side."""
    _, n_layers, hidden = features.shape
    if labels.shape[1] % n_sets:
        raise ValueError(f"{labels.shape[1]} label columns do not split into {n_sets} sets")
    seed = config.seeds[0] if seed is None else seed
    network = _MlpNetwork(n_layers, hidden, n_sets, labels.shape[1] // n_sets, config, seed)
    return _fit_minibatch(features, labels, mask, config, seed, network)


# ----------------------------------------------------------------------------- logistic regression

# rows of the training features sampled to estimate each layer's leading covariance directions
_PRECONDITION_ROWS = 2048
_PRECONDITION_OVERSAMPLE = 8
_POWER_ITERATIONS = 1
# subspace dimension of the solver: the new preconditioned gradient and the last steps
_SUBSPACE_MEMORY = 2
_SUBSPACE_NEWTON_STEPS = 8
# a probe whose objective no step has lowered for this many iterations stops
_STALLED_ITERATIONS = 3
_ARMIJO_HALVINGS = 12
# bias of a probe whose training rows hold one class only: it predicts that class
_DEGENERATE_LOGIT = 10.0


def _layer_preconditioner(
    x: torch.Tensor, rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading covariance directions ``V [H, r]`` and their rescaling ``coef [r]``.

    The preconditioner is ``P g = g + V diag(coef) V^T g``, i.e. an approximate inverse of
    ``X^T X / n + delta`` (up to a constant): the r leading eigen-directions, estimated by a
    randomised range finder on a row sample, are scaled by ``(beta + delta) / (theta + delta)``
    against the rest, ``beta`` being the mean remaining eigenvalue. With ``r`` near the hidden
    size, the exact eigendecomposition of the sample covariance is used.
    """
    n_rows, hidden = x.shape
    if n_rows > _PRECONDITION_ROWS:
        rows = torch.randperm(n_rows, generator=generator)[:_PRECONDITION_ROWS].sort().values
        sample = x[rows]
    else:
        sample = x
    n_sample = len(sample)
    trace = float(sample.square().sum(dtype=torch.float64)) / n_sample
    delta = 1e-3 * trace / hidden + 1e-12
    if rank + _PRECONDITION_OVERSAMPLE >= hidden:
        covariance = (sample.T @ sample).to(torch.float64) / n_sample
        theta, vectors = torch.linalg.eigh(covariance)
        beta = float(theta.clamp(min=0).mean())
    else:
        # randomised SVD of the sample (range finder with power iterations)
        probe = torch.randn(hidden, rank + _PRECONDITION_OVERSAMPLE, generator=generator)
        basis, _ = torch.linalg.qr(sample @ probe)
        for _ in range(_POWER_ITERATIONS):
            basis, _ = torch.linalg.qr(sample @ (sample.T @ basis))
        # eigenvectors of the sample covariance in the basis: from the small Gram B B^T
        small = (basis.T @ sample).to(torch.float64)  # [r + p, H]
        # a small dense eigenproblem: threads only add synchronisation (seconds on a busy box)
        with _threads(1):
            eigenvalues, rotation = torch.linalg.eigh(small @ small.T)
        eigenvalues, rotation = eigenvalues.flip(0)[:rank], rotation.flip(1)[:, :rank]
        theta = eigenvalues.clamp(min=0) / n_sample
        vectors = (small.T @ rotation) / eigenvalues.clamp(min=1e-30).sqrt()
        beta = max((trace - float(theta.sum())) / (hidden - rank), 0.0)
    coef = (beta + delta) / (theta.clamp(min=0) + delta) - 1
    return vectors.to(torch.float32), coef.to(torch.float32)


def _loss_change(
    margins: torch.Tensor,
    prob: torch.Tensor,
    prob_neg: torch.Tensor,
    change: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Per row, cross-entropy at ``margins + change`` minus at ``margins``, without cancellation.

    softplus(m + d) - softplus(m) = log(q + p e^d) = log1p(p expm1(d)), p = sigmoid(m),
    q = sigmoid(-m); the log1p form is exact for small d, the log form where p expm1(d) nears
    -1, and the plain difference for large d (no cancellation there).
    """
    scaled = prob * torch.expm1(change.clamp(max=30.0))
    value = torch.log1p(scaled.clamp(min=-0.5))
    far = scaled < -0.5
    if far.any():
        tail = torch.log((prob_neg + prob * torch.exp(change)).clamp(min=1e-30))
        value = torch.where(far, tail, value)
    large = change > 30.0
    if large.any():
        plain = F.softplus(margins + change) - F.softplus(margins)
        value = torch.where(large, plain, value)
    return value - labels * change


def _load_standardised(out: torch.Tensor, source: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``out [n, H]`` with ``source`` standardised per column; return the means and stds.

    Two passes: the first converts row blocks to float32 and, while a block is in cache, adds
    its column sums and sums of squares (matrix-vector products; shifted by the first block's
    means, so no cancellation); the second standardises in place. Constant columns (std below
    ``_MIN_STD``) are centred and left unscaled.
    """
    n_rows, hidden = out.shape
    values = torch.from_numpy(_writeable(source))
    block = min(n_rows, 512)
    ones = torch.ones(1, block, dtype=torch.float32)
    scratch = torch.empty(block, hidden)
    sums = torch.zeros(hidden, dtype=torch.float64)
    squares = torch.zeros(hidden, dtype=torch.float64)
    shift = None
    for start in range(0, n_rows, block):
        rows = out[start : start + block]
        rows.copy_(values[start : start + block])
        if shift is None:
            shift = rows.mean(dim=0)
        centred = torch.sub(rows, shift, out=scratch[: len(rows)])
        sums += (ones[:, : len(rows)] @ centred)[0]
        centred.square_()
        squares += (ones[:, : len(rows)] @ centred)[0]
    offset = sums / n_rows
    variance = (squares / n_rows - offset.square()).clamp(min=0)
    mean = (shift.to(torch.float64) + offset).to(torch.float32)
    std = variance.sqrt().to(torch.float32)
    _check_finite(std[None].numpy())
    std = torch.where(std < _MIN_STD, 1.0, std)
    scale = 1.0 / std
    torch.addcmul(-mean * scale, out, scale, out=out)  # (x - mean) / std in one pass
    return mean, std


def _logistic_terms(
    margins: torch.Tensor, labels: torch.Tensor, row_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted loss, residual and curvature per row for logits ``margins`` ``[L, n, K]``."""
    loss = (F.softplus(margins) - labels * margins) * row_weight
    prob = torch.sigmoid(margins)
    return loss, (prob - labels) * row_weight, prob * (1 - prob) * row_weight


def fit_logreg_probes(
    features: np.ndarray, labels: np.ndarray, mask: np.ndarray, config: LogregConfig
) -> FittedProbes:
    """L2 logistic regression per (layer, label), all fitted together (see :class:`LogregConfig`).

    The solver is a preconditioned subspace Newton method, batched over probes: per iteration,
    one pass over the features gives every probe's gradient; the preconditioned gradient
    (leading covariance directions of the layer rescaled, see :func:`_layer_preconditioner`)
    and the last steps span a small subspace, and one more pass gives the images of the new
    direction; the objective restricted to that subspace is then minimised exactly by a
    damped Newton method that needs no pass over the features (the subspace images are kept).
    On a quadratic this is preconditioned conjugate gradients; on logistic losses it needs far
    fewer passes than L-BFGS. Each probe stops, and is frozen, once every component of its
    gradient is at most ``tol`` (sklearn's criterion); the problem is strictly convex, so the
    result is the unique optimum whatever the batching. A probe whose training rows hold one
    class only gets zero weights and a bias predicting that class (sklearn refuses to fit it).
    """
    n_rows, n_layers, hidden = features.shape
    n_labels = labels.shape[1]
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32).copy())
    in_task = torch.from_numpy(np.asarray(mask, dtype=bool).copy())
    problem = _LogregProblem(y=torch.where(in_task, y, 0.0), in_task=in_task, config=config)

    # layers in groups whose standardised copies and per-row solver state (margins, residuals,
    # the subspace images: about 8 float32 values per row and label) fit the memory budget;
    # the feature buffers are reused from group to group
    per_layer = 4 * n_rows * (hidden + 8 * n_labels)
    per_group = max(1, min(n_layers, _LOGREG_BUFFER_BYTES // per_layer))
    buffers = [torch.empty(n_rows, hidden) for _ in range(per_group)]
    means, stds, weights, biases, iterations, curves = [], [], [], [], [], []
    for first in range(0, n_layers, per_group):
        layers = range(first, min(first + per_group, n_layers))
        xs = []
        for layer, x in zip(layers, buffers, strict=False):
            mean, std = _load_standardised(x, features[:, layer])
            means.append(mean)
            stds.append(std)
            xs.append(x)
        weight, bias, steps, curve = problem.solve(xs, list(layers))
        weights.append(weight)
        biases.append(bias)
        iterations.append(steps)
        curves.append(curve)
    unconverged = int(sum((steps >= config.max_iter).sum() for steps in iterations))
    if unconverged:
        log.warning(
            "logreg: %d of %d probes did not reach tol=%g in max_iter=%d iterations",
            unconverged,
            n_layers * n_labels,
            config.tol,
            config.max_iter,
        )
    network = _LinearNetwork(n_layers, hidden, n_labels)
    network.load([torch.cat(weights).transpose(1, 2).contiguous(), torch.cat(biases)])
    longest = max(len(curve) for curve in curves)
    # groups stop at different iterations: a stopped probe's objective stays where it is
    padded = [np.concatenate([c, np.repeat(c[-1:], longest - len(c), axis=0)]) for c in curves]
    train_loss = np.concatenate(padded, axis=1)
    return FittedProbes(
        network=network,
        feature_mean=torch.stack(means),
        feature_std=torch.stack(stds),
        best_epoch=torch.cat(iterations).numpy(),
        train_loss=train_loss[1:] if len(train_loss) > 1 else train_loss,
        val_loss=np.zeros((0, n_layers, n_labels)),
    )


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


# per-row work (layers x rows x labels) below this many values runs on one thread
_SERIAL_ELEMENTS = 1 << 21


def _writeable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


# the logreg solver holds about this many bytes of layers at a time (at least one layer)
_LOGREG_BUFFER_BYTES = 1 << 30


@dataclass
class _LogregProblem:
    """The labels side of the logreg probes; :meth:`solve` fits a group of layers."""

    y: torch.Tensor  # [n, K], 0 outside the mask
    in_task: torch.Tensor  # [n, K]
    config: LogregConfig

    def __post_init__(self) -> None:
        counts = self.in_task.sum(dim=0).to(torch.float32)  # [K]
        self.positives = self.y.sum(dim=0)
        self.row_weight = self.in_task.to(torch.float32) / counts.clamp(min=1)  # row means
        self.lam = 1.0 / (self.config.c * counts.clamp(min=1))  # sklearn: 1 / (C n)
        self.one_class = (self.positives == 0) | (self.positives == counts)
        prior = (self.positives / counts.clamp(min=1)).clamp(1e-6, 1 - 1e-6)
        start = torch.log(prior / (1 - prior))  # the best constant predictor
        sign = torch.where(self.positives > 0, 1.0, -1.0)
        self.start_bias = torch.where(self.one_class, sign * _DEGENERATE_LOGIT, start)

    def solve(
        self, xs: list[torch.Tensor], layers: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Weights ``[L, K, H]``, biases, iterations ``[L, K]``, objective curve ``[T, L, K]``."""
        n_layers, n_rows, n_labels = len(xs), len(xs[0]), self.y.shape[1]
        # passes over the features use every thread; the small per-row work of few probes
        # runs on one (thread barriers would cost more than they save, worse on busy nodes)
        budget = torch.get_num_threads()
        small = n_layers * n_rows * n_labels < _SERIAL_ELEMENTS
        with _threads(1 if small else budget):
            return self._solve(xs, layers, budget)

    def _solve(
        self, xs: list[torch.Tensor], layers: list[int], budget: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        config, lam, row_weight = self.config, self.lam, self.row_weight
        n_layers, (n_rows, hidden), n_labels = len(xs), xs[0].shape, self.y.shape[1]
        weight = torch.zeros(n_layers, n_labels, hidden)  # [L, K, H]: rows of F.linear
        bias = self.start_bias.expand(n_layers, n_labels).clone()
        active = (~self.one_class).expand(n_layers, n_labels).clone()
        iterations = torch.zeros(n_layers, n_labels, dtype=torch.int64)
        stalled = torch.zeros(n_layers, n_labels, dtype=torch.int64)
        margins = bias[:, None, :].expand(n_layers, n_rows, n_labels).clone()  # [L, n, K]
        with _threads(budget):
            preconditioners = [
                _layer_preconditioner(
                    x,
                    config.precondition_rank,
                    torch.Generator().manual_seed(_derived_seed(3, layer)),
                )
                if config.precondition_rank
                else None
                for x, layer in zip(xs, layers, strict=True)
            ]
        labels = self.y[None]  # [1, n, K]
        directions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (w, b, image)
        curve = []
        for iteration in range(1, config.max_iter + 2):
            loss, residual, _ = _logistic_terms(margins, labels, row_weight)
            penalty = 0.5 * lam * weight.square().sum(-1)
            curve.append((loss.sum(dim=1, dtype=torch.float64) + penalty).numpy())
            live = active.any(dim=1).tolist()  # layers with a probe still running
            grad_w = lam[None, :, None] * weight
            with _threads(budget):
                for layer in range(n_layers):
                    if live[layer]:
                        grad_w[layer] += residual[layer].T @ xs[layer]
            grad_b = residual.sum(dim=1)
            largest = torch.maximum(grad_w.abs().amax(dim=-1), grad_b.abs())
            # converged; or no step has lowered the objective for a while (float32 precision)
            converged = active & ((largest <= config.tol) | (stalled >= _STALLED_ITERATIONS))
            iterations[converged] = (
                iteration - 1 - torch.clamp(stalled[converged], max=iteration - 1)
            )
            active &= ~converged
            if not active.any() or iteration > config.max_iter:
                break
            iterations[active] = iteration
            live = active.any(dim=1).tolist()
            step_w = torch.where(active[..., None], -grad_w, 0.0)
            step_b = torch.where(active, -grad_b, 0.0)
            image = step_b[:, None, :].expand(n_layers, n_rows, n_labels).clone()
            for layer, preconditioner in enumerate(preconditioners):
                if live[layer] and preconditioner is not None:
                    vectors, coef = preconditioner
                    g = step_w[layer]
                    step_w[layer] = g + ((g @ vectors) * coef) @ vectors.T
            with _threads(budget):
                for layer in range(n_layers):
                    if live[layer]:
                        image[layer] += F.linear(xs[layer], step_w[layer])
            directions = [*directions[-_SUBSPACE_MEMORY:], (step_w, step_b, image)]
            coefficients = _subspace_newton(
                margins,
                labels,
                row_weight,
                lam,
                weight,
                directions,
                active,
                torch.from_numpy(curve[-1]),
            )
            stalled = torch.where((coefficients != 0).any(dim=-1), 0, stalled + 1)
            pairs = list(zip(coefficients.unbind(-1), directions, strict=True))
            step_w = sum(c[..., None] * d[0] for c, d in pairs)
            step_b = sum(c * d[1] for c, d in pairs)
            step_m = sum(c[:, None, :] * d[2] for c, d in pairs)
            weight += step_w
            bias += step_b
            margins += step_m
            directions[-1] = (step_w, step_b, step_m)  # the step replaces the raw direction
        return weight, bias, iterations, np.stack(curve)


def _subspace_newton(
    margins: torch.Tensor,
    labels: torch.Tensor,
    row_weight: torch.Tensor,
    lam: torch.Tensor,
    weight: torch.Tensor,
    directions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    active: torch.Tensor,
    objective: torch.Tensor,
) -> torch.Tensor:
    """Coefficients ``[L, K, M]`` of the directions that minimise each probe's objective.

    Damped Newton in ``len(directions)`` dimensions; every quantity comes from the kept images
    (``X d + d_b``), so no pass over the features is needed.
    """
    d_w = torch.stack([d[0] for d in directions], dim=-1)  # [L, K, H, M]
    images = torch.stack([d[2] for d in directions], dim=-1)  # [L, n, K, M]
    n_dirs = d_w.shape[-1]
    gram = torch.einsum("lkhi,lkhj->lkij", d_w, d_w).to(torch.float64)  # [L, K, M, M]
    towards_w = torch.einsum("lkhi,lkh->lki", d_w, weight).to(torch.float64)
    lam64 = lam.to(torch.float64)[None, :, None]
    coef = torch.zeros(*active.shape, n_dirs, dtype=torch.float64)
    eye = torch.eye(n_dirs, dtype=torch.float64)

    prob = torch.sigmoid(margins)
    prob_neg = torch.sigmoid(-margins)

    def change_of_objective(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # f(c) - f(0), each row's loss change computed without cancellation; and X S c
        change = torch.einsum("lnki,lki->lnk", images, c.to(torch.float32))
        loss = _loss_change(margins, prob, prob_neg, change, labels) * row_weight
        penalty = (towards_w + 0.5 * torch.einsum("lkij,lkj->lki", gram, c)) * c
        return loss.sum(dim=1, dtype=torch.float64) + lam64[..., 0] * penalty.sum(-1), change

    current = torch.zeros(active.shape, dtype=torch.float64)
    change = torch.zeros_like(margins)
    # decreases below this share of the objective are float32 noise in the Newton step
    floor = 1e-10 * (objective.abs() + 1)
    done = ~active
    for _ in range(_SUBSPACE_NEWTON_STEPS):
        _, residual, curvature = _logistic_terms(margins + change, labels, row_weight)
        grad = torch.einsum("lnki,lnk->lki", images, residual).to(torch.float64)
        grad += lam64 * (towards_w + torch.einsum("lkij,lkj->lki", gram, coef))
        weighted = images * curvature[..., None]
        hess = torch.einsum("lnki,lnkj->lkij", weighted, images).to(torch.float64)
        hess += lam64[..., None] * gram
        ridge = 1e-9 * hess.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-30)
        newton = torch.linalg.solve(hess + ridge[..., None, None] * eye, grad[..., None])[..., 0]
        # the Newton decrement: twice the predicted decrease
        decrement = (grad * newton).sum(-1)
        done |= decrement <= floor
        if done.all():
            break
        scale = torch.where(done, 0.0, torch.ones(active.shape, dtype=torch.float64))
        searching = ~done
        for _ in range(_ARMIJO_HALVINGS):  # halve each probe's step until it decreases enough
            trial, change = change_of_objective(coef - scale[..., None] * newton)
            searching &= ~(trial <= current - 1e-4 * scale * decrement)
            if not searching.any():
                break
            scale = torch.where(searching, scale / 2, scale)
        if searching.any():  # no acceptable step: the probe's subspace minimum is reached
            done |= searching
            scale = torch.where(searching, 0.0, scale)
            trial, change = change_of_objective(coef - scale[..., None] * newton)
        coef = coef - scale[..., None] * newton
        current = trial
    return coef.to(torch.float32)


# ----------------------------------------------------------------------------- control task


def control_labels(labels: np.ndarray, mask: np.ndarray, seed: int, stratum: int) -> np.ndarray:
    """Labels permuted at random within each label's task rows (the stratum); see module doc.

    ``labels``/``mask`` ``[rows, labels]`` are the rows of one split; ``stratum`` tells the
    splits apart (0 train, 1 eval) so that they draw independent permutations. Rows outside a
    label's mask keep their label (they count for nothing). Each label keeps its number of
    positives among its rows exactly.
    """
    rng = np.random.default_rng([seed, 2, stratum])
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    shuffled = labels.copy()
    for label in range(labels.shape[1]):
        rows = np.flatnonzero(mask[:, label])
        shuffled[rows, label] = labels[rng.permutation(rows), label]
    return shuffled


# ----------------------------------------------------------------------------- one layer-shard


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
) -> ProbeResults:
    """Fit the probes of one layer-shard (every seed, with controls) and score them.

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

    # fits: logreg is deterministic, so one fit holds the real probes and every seed's
    # control; the others train once per seed, real and control labels side by side
    predictions, control_predictions, fits = [], [], []
    if isinstance(config, LogregConfig):
        labels = np.concatenate([y_train, *control_train], axis=1)
        masks = np.concatenate([m_train] * (1 + len(control_train)), axis=1)
        probes = fit_logreg_probes(x_train, labels, masks, config)
        decided = _decisions(probes, x_eval, layers)
        for index in range(len(seeds)):
            predictions.append(decided[..., :n_labels])
            fits.append((probes, slice(0, n_labels)))
            if control:
                columns = slice((index + 1) * n_labels, (index + 2) * n_labels)
                control_predictions.append(decided[..., columns])
    else:
        for index, seed in enumerate(seeds):
            n_sets = 2 if control else 1
            labels = np.concatenate([y_train, *control_train[index : index + 1]], axis=1)
            masks = np.concatenate([m_train] * n_sets, axis=1)
            probes = config.fit(x_train, labels, masks, seed, n_sets)
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
        lengths = probes.best_epoch[:, columns] if isinstance(config, LogregConfig) else None
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
) -> ProbeResults:
    """One probe job: the probes of one (model, task, pooling, probe, layer-shard).

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
    results = probe_layers(
        features[train],
        labels[train],
        mask[train],
        features[evaluate],
        labels[evaluate],
        mask[evaluate],
        expected,
        names,
        config,
        evaluation_config,
        eval_groups=task["image_id"].to_numpy()[evaluate],
        task_kind=metadata["kind"],
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


__all__ = [
    "PROBE_TABLE_SCHEMA",
    "SCORE_SCHEMA",
    "FittedProbes",
    "ProbeResults",
    "control_labels",
    "fit_linear_probes",
    "fit_logreg_probes",
    "fit_mlp_probes",
    "probe_layers",
    "run_probe_job",
]
