"""Probes trained by mini-batches (``linear`` and ``mlp``): their networks and the trainer."""

from __future__ import annotations

from collections.abc import Sequence

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


def batches_seeds(device: str | torch.device) -> bool:
    """Whether the seeds of one probe job are fitted in one batched model on ``device``: the
    one place that decides (:func:`fit_seeds`' default).

    The probes are the same (float tolerance) either way, and so are the FLOPs and memory
    traffic; batching saves only per-step overhead (kernel launches, dispatch, Python), once per
    step instead of once per seed and step. On CUDA a probe job's small steps are launch-bound,
    so that pays, and the extra memory (every seed's validation slice and batch at once) is the
    GPU's. On the CPU, benchmarks/probes.py --case seeds (the paper's linear settings, 2
    threads) measured no gain beyond noise (object shape 1.0-1.2x, caption 1.0x) for 0.2-0.5 GB
    more memory, so the CPU fits one seed after another.
    """
    return torch.device(device).type == "cuda"


def _fit_minibatch(
    features: np.ndarray,
    stats: tuple[torch.Tensor, torch.Tensor],
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: LinearConfig,
    seeds: Sequence[int],
    networks: Sequence[_Network],
    device: str = "cpu",
) -> list[FittedProbes]:
    """Adam on mini-batches with early stopping per (layer, stopping unit), unless the config
    turns it off; see the package doc. One fit per seed, all in one batched model, on features
    standardised by ``stats`` (mean, std ``[layers, hidden]``).

    Seed ``seeds[i]`` trains ``networks[i]`` on ``labels[i]``/``masks[i]`` exactly as it
    would alone: the network's layers are the seeds' blocks of layers one after another, each
    block fed its own seed's rows and labels, and the loss sums independent probes, so Adam
    (elementwise) moves each as alone. Per seed, the validation slice and mini-batch order
    come from a generator seeded by the seed, dropout masks from it too on the CPU (from one
    on the device elsewhere), drawn in the same order as a fit of that seed alone; neither
    depends on the labels. A seed that stops early keeps its probes and curves from then on
    (the batch still carries it until every seed has stopped). On ``device`` (cpu, cuda,
    cuda:N) the features are held once (on the CPU: the caller's array itself), batches are
    gathered and standardised there, and the fitted probes come back on the CPU.
    """
    n_rows, n_layers, hidden = features.shape
    n_seeds, n_labels = len(seeds), labels[0].shape[1]
    device = torch.device(device)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    dropout_generators = (
        generators
        if device.type == "cpu"
        else [torch.Generator(device).manual_seed(_derived_seed(seed, 2)) for seed in seeds]
    )
    feature_mean, feature_std = stats
    source = torch.from_numpy(_writeable(features)).to(device)

    def per_layer(values: torch.Tensor) -> torch.Tensor:
        """``[seeds, ...]`` to ``[seeds * layers, ...]``: a seed's value for each of its layers."""
        return values.repeat_interleave(n_layers, dim=0)

    # [seeds * layers, hidden]: every seed's block of layers standardised alike
    mean, std = (stat.repeat(n_seeds, 1).to(device) for stat in (feature_mean, feature_std))
    network = _Network.stacked(networks)
    network.to(device)
    # [rows, seeds, labels]: each seed's own label columns (its control labels are its own)
    label_tensor = torch.from_numpy(
        np.stack([np.asarray(y, dtype=np.float32) for y in labels], axis=1)
    ).to(device)
    mask_tensor = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks], 1))
    mask_tensor = mask_tensor.to(device)
    seed_index = torch.arange(n_seeds, device=device)
    unit_of_label = torch.from_numpy(network.unit_of_label)
    n_units = int(unit_of_label.max()) + 1
    # [labels, units] one-hot: per-unit validation loss = mean of its labels' losses
    membership = F.one_hot(unit_of_label, n_units).to(torch.float32).to(device)

    def standardised(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Seed i's rows ``rows[i]`` (``[seeds, n]``): one batch ``[n, seeds * layers, hidden]``."""
        flat = rows.T.reshape(-1).to(device)  # row-major [n, seeds]: seeds' blocks side by side
        batch = source.index_select(0, flat).float()
        return batch.reshape(rows.shape[1], n_seeds * n_layers, hidden).sub_(mean).div_(scale)

    def per_seed(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``[rows, seeds, labels]`` at each seed's own rows: ``[n, seeds, labels]``."""
        # flat (row, seed) indices: index_select is several times faster than fancy indexing
        flat = (rows.T.to(device) * n_seeds + seed_index).reshape(-1)
        return (
            values.reshape(-1, values.shape[-1])
            .index_select(0, flat)
            .reshape(-1, *values.shape[1:])
        )

    orders = [torch.randperm(n_rows, generator=generator) for generator in generators]
    n_val = min(round(config.val_fraction * n_rows), n_rows - 1)
    val_rows = torch.stack([order[:n_val].sort().values for order in orders])
    fit_rows = torch.stack([order[n_val:] for order in orders])
    val_features = standardised(val_rows, std)
    val_labels, val_mask = per_seed(label_tensor, val_rows), per_seed(mask_tensor, val_rows)
    val_counts = val_mask.sum(dim=0)  # [seeds, labels]
    label_has_val = (val_counts > 0).to(torch.float32)
    has_val = per_layer(label_has_val @ membership > 0)  # [seeds * layers, units]

    optimizer = torch.optim.Adam(network.param_groups(config.weight_decay), lr=config.lr)
    best = [param.detach().clone() for param in network.params]
    shape = (n_seeds * n_layers, n_units)
    best_val = torch.full(shape, float("inf"), device=device)
    best_epoch = torch.zeros(shape, dtype=torch.int64, device=device)
    epochs_since_best = torch.zeros(shape, dtype=torch.int64, device=device)
    running = torch.ones(n_seeds, dtype=torch.bool)  # seeds whose own fit has not stopped
    epochs_run = np.full(n_seeds, config.epochs)
    train_curve, val_curve = [], []
    # inverted dropout: the 1 / (1 - p) scale folded into the standardisation
    dropout_std = std * (1 - config.dropout)

    for epoch in range(1, config.epochs + 1):
        loss_sums = torch.zeros(n_seeds * n_layers, n_labels, device=device)
        row_counts = torch.zeros(n_seeds, n_labels, device=device)
        shuffled = torch.stack(
            [
                rows[torch.randperm(len(rows), generator=generator)]
                for rows, generator in zip(fit_rows, generators, strict=True)
            ]
        )
        for batch_rows in shuffled.split(config.batch_size, dim=1):
            rows = batch_rows.sort(dim=1).values  # sorted rows read memory in order
            batch = standardised(rows, dropout_std)
            if config.dropout > 0:
                for block, generator in enumerate(dropout_generators):
                    layers = batch[:, block * n_layers : (block + 1) * n_layers]
                    drop = (
                        torch.rand(layers.shape, generator=generator, device=device)
                        < config.dropout
                    )
                    layers.masked_fill_(drop, 0.0)
            batch_mask = per_seed(mask_tensor, rows)
            logits = network.forward(batch)
            sums = _masked_bce_sums(logits, per_seed(label_tensor, rows), batch_mask)
            counts = batch_mask.sum(dim=0)
            # each probe's own mean over its rows in the batch; summed so probes stay independent
            loss = (sums / per_layer(counts).clamp(min=1)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sums += sums.detach()
            row_counts += counts
        # NaN: labels without rows
        train_curve.append((loss_sums / per_layer(row_counts)).cpu().numpy())

        with torch.no_grad():
            if n_val:
                val_sums = _masked_bce_sums(network.forward(val_features), val_labels, val_mask)
                label_loss = val_sums / per_layer(val_counts)
                val_curve.append(label_loss.cpu().numpy())
                unit_loss = (torch.nan_to_num(label_loss, nan=0.0) @ membership) / per_layer(
                    label_has_val @ membership
                ).clamp(min=1)
            else:
                unit_loss = torch.full(shape, float("nan"), device=device)
            patient = epochs_since_best < config.patience
            # probes without validation rows keep their latest weights
            improved = ~has_val | (patient & (unit_loss < best_val))
            if not config.early_stopping:  # the last epoch's weights are the probe
                improved = torch.ones_like(improved)
            # a seed that has stopped keeps what its fit alone kept: nothing of it moves on
            improved &= per_layer(running.to(device))[:, None]
            best = network.keep_best(best, improved)
            best_val = torch.where(improved, unit_loss, best_val)
            best_epoch[improved] = epoch
            epochs_since_best = torch.where(improved, 0, epochs_since_best + 1)
        if config.early_stopping:
            patient_units = (has_val & (epochs_since_best < config.patience)).reshape(n_seeds, -1)
            stopped = has_val.reshape(n_seeds, -1).any(dim=1) & ~patient_units.any(dim=1)
            stopped = stopped.cpu() & running
            epochs_run[stopped.numpy()] = epoch
            running &= ~stopped
            if not running.any():
                break

    network.load(best)
    network.to("cpu")
    best_epoch = best_epoch[:, unit_of_label.to(device)].cpu().numpy()
    train_loss = np.stack(train_curve).astype(np.float64)
    val_loss = np.array(val_curve, dtype=np.float64).reshape(-1, n_seeds * n_layers, n_labels)
    fitted = []
    for index, part in enumerate(network.blocks(n_seeds)):
        layers = slice(index * n_layers, (index + 1) * n_layers)
        epochs = epochs_run[index]
        fitted.append(
            FittedProbes(
                network=part,
                feature_mean=feature_mean,
                feature_std=feature_std,
                best_epoch=best_epoch[layers].copy(),
                train_loss=train_loss[:epochs, layers].copy(),
                val_loss=val_loss[:epochs, layers].copy(),
            )
        )
    return fitted


def _network(
    config: LinearConfig, n_layers: int, hidden: int, n_columns: int, n_sets: int, seed: int
) -> _Network:
    """A fresh network for ``n_sets`` label sets side by side in ``n_columns`` label columns."""
    if not isinstance(config, MlpConfig):
        return _LinearNetwork(n_layers, hidden, n_columns)
    if n_columns % n_sets:
        raise ValueError(f"{n_columns} label columns do not split into {n_sets} sets")
    return _MlpNetwork(n_layers, hidden, n_sets, n_columns // n_sets, config, seed)


def fit_seeds(
    features: np.ndarray,
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: LinearConfig,
    seeds: Sequence[int],
    n_sets: int = 1,
    device: str = "cpu",
    batched: bool | None = None,
) -> list[FittedProbes]:
    """The probes of every seed of ``seeds``, seed i fitted on ``labels[i]``/``masks[i]``
    ``[N, n_sets * K]`` (``n_sets`` label sets side by side: real, control).

    ``batched`` (default: :func:`batches_seeds` of ``device``): all seeds in one batched
    model, or one fit per seed; the probes are the same (float tolerance) either way.
    """
    _, n_layers, hidden = features.shape
    if not len(labels) == len(masks) == len(seeds):
        raise ValueError(f"{len(seeds)} seeds, {len(labels)} label and {len(masks)} mask sets")

    def networks(chosen: Sequence[int]) -> list[_Network]:
        return [_network(config, n_layers, hidden, labels[0].shape[1], n_sets, s) for s in chosen]

    if config.standardize:  # the same for every seed: computed once
        stats = feature_stats(features)
    else:
        stats = torch.zeros(n_layers, hidden), torch.ones(n_layers, hidden)
    if batches_seeds(device) if batched is None else batched:
        return _fit_minibatch(
            features, stats, labels, masks, config, seeds, networks(seeds), device
        )
    return [
        _fit_minibatch(features, stats, [y], [m], config, [seed], networks([seed]), device)[0]
        for y, m, seed in zip(labels, masks, seeds, strict=True)
    ]


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
    seed = config.seeds[0] if seed is None else seed
    return fit_seeds(features, [labels], [mask], config, [seed], 1, device)[0]


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
    seed = config.seeds[0] if seed is None else seed
    return fit_seeds(features, [labels], [mask], config, [seed], n_sets, device)[0]
