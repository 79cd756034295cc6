"""Probes trained by mini-batches (``linear`` and ``mlp``): their networks and the trainer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vlprobe.probes.base import (
    FittedProbes,
    _derived_seed,
    _LinearNetwork,
    _masked_bce_sums,
    _MlpNetwork,
    _Network,
    _writeable,
    feature_stats,
)
from vlprobe.settings import (
    LinearConfig,
    MlpConfig,
)


def _fit_minibatch(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: LinearConfig,
    seed: int,
    network: _Network,
    device: str = "cpu",
) -> FittedProbes:
    """Adam on mini-batches with early stopping per (layer, stopping unit), unless the config
    turns it off; see the package doc.

    Mini-batch order comes from a generator seeded by ``seed``, dropout masks from it too on
    the CPU (from one on the device elsewhere); neither depends on the labels. On ``device``
    (cpu, cuda, cuda:N) the features are held once (on the CPU: the caller's array itself),
    batches are gathered and standardised there, and the fitted probes come back on the CPU.
    """
    n_rows, n_layers, hidden = features.shape
    n_labels = labels.shape[1]
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    dropout_generator = (
        generator
        if device.type == "cpu"
        else torch.Generator(device).manual_seed(_derived_seed(seed, 2))
    )
    if config.standardize:
        feature_mean, feature_std = feature_stats(features)
    else:
        feature_mean, feature_std = torch.zeros(n_layers, hidden), torch.ones(n_layers, hidden)
    source = torch.from_numpy(_writeable(features)).to(device)
    mean, std = feature_mean.to(device), feature_std.to(device)
    network.to(device)
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.float32).copy()).to(device)
    mask_tensor = torch.from_numpy(np.asarray(mask, dtype=bool).copy()).to(device)
    unit_of_label = torch.from_numpy(network.unit_of_label)
    n_units = int(unit_of_label.max()) + 1
    # [labels, units] one-hot: per-unit validation loss = mean of its labels' losses
    membership = F.one_hot(unit_of_label, n_units).to(torch.float32).to(device)

    def standardised(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return source.index_select(0, rows.to(device)).float().sub_(mean).div_(scale)

    order = torch.randperm(n_rows, generator=generator)
    n_val = min(round(config.val_fraction * n_rows), n_rows - 1)
    val_rows, fit_rows = order[:n_val].sort().values, order[n_val:]
    val_features = standardised(val_rows, std)
    val_rows = val_rows.to(device)
    val_labels, val_mask = label_tensor[val_rows], mask_tensor[val_rows]
    val_counts = val_mask.sum(dim=0)
    label_has_val = (val_counts > 0).to(torch.float32)
    has_val = (label_has_val @ membership > 0).expand(n_layers, n_units)

    optimizer = torch.optim.Adam(network.param_groups(config.weight_decay), lr=config.lr)
    best = [param.detach().clone() for param in network.params]
    best_val = torch.full((n_layers, n_units), float("inf"), device=device)
    best_epoch = torch.zeros(n_layers, n_units, dtype=torch.int64, device=device)
    epochs_since_best = torch.zeros(n_layers, n_units, dtype=torch.int64, device=device)
    train_curve, val_curve = [], []
    # inverted dropout: the 1 / (1 - p) scale folded into the standardisation
    dropout_std = std * (1 - config.dropout)

    for epoch in range(1, config.epochs + 1):
        loss_sums = torch.zeros(n_layers, n_labels, device=device)
        row_counts = torch.zeros(n_labels, device=device)
        shuffled = fit_rows[torch.randperm(len(fit_rows), generator=generator)]
        for batch_rows in shuffled.split(config.batch_size):
            rows = batch_rows.sort().values  # sorted rows read memory in order
            batch = standardised(rows, dropout_std)
            if config.dropout > 0:
                drop = (
                    torch.rand(batch.shape, generator=dropout_generator, device=device)
                    < config.dropout
                )
                batch.masked_fill_(drop, 0.0)
            rows = rows.to(device)
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
        train_curve.append((loss_sums / row_counts).cpu().numpy())  # NaN: labels without rows

        with torch.no_grad():
            if n_val:
                val_sums = _masked_bce_sums(network.forward(val_features), val_labels, val_mask)
                label_loss = val_sums / val_counts
                val_curve.append(label_loss.cpu().numpy())
                unit_loss = (torch.nan_to_num(label_loss, nan=0.0) @ membership) / (
                    label_has_val @ membership
                ).clamp(min=1)
            else:
                unit_loss = torch.full((n_layers, n_units), float("nan"), device=device)
            patient = epochs_since_best < config.patience
            # probes without validation rows keep their latest weights
            improved = ~has_val | (patient & (unit_loss < best_val))
            if not config.early_stopping:  # the last epoch's weights are the probe
                improved = torch.ones_like(improved)
            best = network.keep_best(best, improved)
            best_val = torch.where(improved, unit_loss, best_val)
            best_epoch[improved] = epoch
            epochs_since_best = torch.where(improved, 0, epochs_since_best + 1)
        patient_units = has_val & (epochs_since_best < config.patience)
        if config.early_stopping and has_val.any() and not patient_units.any():
            break

    network.load(best)
    network.to("cpu")
    return FittedProbes(
        network=network,
        feature_mean=feature_mean,
        feature_std=feature_std,
        best_epoch=best_epoch[:, unit_of_label.to(device)].cpu().numpy(),
        train_loss=np.stack(train_curve).astype(np.float64),
        val_loss=np.array(val_curve, dtype=np.float64).reshape(-1, n_layers, n_labels),
    )


def fit_linear_probes(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: LinearConfig,
    seed: int | None = None,
    device: str = "cpu",
) -> FittedProbes:
    """Train a linear probe per (layer, label): ``features [N, L, H]``, ``labels``/``mask [N, K]``.

    ``seed`` defaults to the first of ``config.seeds``; the fit runs on ``device``.
    """
    _, n_layers, hidden = features.shape
    network = _LinearNetwork(n_layers, hidden, labels.shape[1])
    seed = config.seeds[0] if seed is None else seed
    return _fit_minibatch(features, labels, mask, config, seed, network, device)


def fit_mlp_probes(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    config: MlpConfig,
    seed: int | None = None,
    n_sets: int = 1,
    device: str = "cpu",
) -> FittedProbes:
    """Train MLP probes; ``labels [N, n_sets * K]`` hold ``n_sets`` label sets side by side."""
    _, n_layers, hidden = features.shape
    if labels.shape[1] % n_sets:
        raise ValueError(f"{labels.shape[1]} label columns do not split into {n_sets} sets")
    seed = config.seeds[0] if seed is None else seed
    network = _MlpNetwork(n_layers, hidden, n_sets, labels.shape[1] // n_sets, config, seed)
    return _fit_minibatch(features, labels, mask, config, seed, network, device)
