"""What every probe kind shares: fitted probes and how they score, feature standardisation,
the masked cross-entropy and derived seeds."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlprobe.settings import MlpConfig

# rows per chunk when a pass over all features is needed (statistics, scoring)
_CHUNK_ROWS = 1024
# values per chunk when scoring (bounds the float32 buffer: 4 bytes each)
_CHUNK_VALUES = 1 << 22
# standard deviations below this are constant features: left unscaled instead of blown up
_MIN_STD = 1e-6


def _derived_seed(*key: int) -> int:
    """A 63-bit seed derived from integers (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


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
    # [layers, labels]: the length of each probe's own curve where probes stop at different
    # steps (logreg: its iterations; the curves are padded to the longest); None: all epochs run
    curve_lengths: np.ndarray | None = None

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
    """Sum over rows of each (layer, label) cross-entropy, rows outside the mask left out.

    ``logits [rows, layers, labels]``; ``labels``/``mask`` ``[rows, labels]`` (the same for
    every layer) or ``[rows, groups, labels]`` for logits whose layers are ``groups`` blocks
    of equal size, block g scored on its own labels (the seeds of a batched fit, each with
    its own rows and control labels).
    """
    if labels.dim() == 2:
        labels, mask = labels[:, None], mask[:, None]
    n_rows, n_layers, n_labels = logits.shape
    blocks = logits.reshape(n_rows, labels.shape[1], -1, n_labels)
    losses = F.binary_cross_entropy_with_logits(
        blocks, labels[:, :, None, :].expand_as(blocks), reduction="none"
    )
    # where (not multiply) so that NaN or junk labels of masked-out rows cannot leak in
    sums = torch.where(mask[:, :, None, :], losses, 0.0).sum(dim=0)
    return sums.reshape(n_layers, n_labels)


def _writeable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


class _Network:
    """Parameters of all probes of a shard; ``unit_of_label`` maps labels to stopping units.

    Early stopping keeps the best epoch per (layer, unit): the unit is the label for linear
    probes and the network for MLPs.
    """

    unit_of_label: np.ndarray
    params: list[torch.Tensor]
    param_names: tuple[str, ...]  # the attributes holding ``params``, in order

    def to(self, device: torch.device | str) -> None:
        """Move the parameters to ``device`` (leaf tensors again, as an optimiser needs)."""
        for name in self.param_names:
            setattr(self, name, getattr(self, name).detach().to(device).requires_grad_())
        self.params = [getattr(self, name) for name in self.param_names]

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

    @staticmethod
    def stacked(networks: Sequence[_Network]) -> _Network:
        """One network whose layers are those of ``networks`` one after another (every
        parameter's first axis is the layer); each block trains as its network would alone."""
        if len(networks) == 1:
            return networks[0]
        units = networks[0].unit_of_label
        if any(not np.array_equal(n.unit_of_label, units) for n in networks):
            raise ValueError("stacked networks must map labels to the same stopping units")
        network = copy.copy(networks[0])
        for name in network.param_names:
            value = torch.cat([getattr(n, name).detach() for n in networks])
            setattr(network, name, value.requires_grad_())
        network.params = [getattr(network, name) for name in network.param_names]
        return network

    def blocks(self, n_blocks: int) -> list[_Network]:
        """The inverse of :meth:`stacked`: ``n_blocks`` networks of equal numbers of layers."""
        if n_blocks == 1:
            return [self]
        parts = []
        for block in range(n_blocks):
            part = copy.copy(self)
            for name in self.param_names:
                value = getattr(self, name).detach()
                size = len(value) // n_blocks
                chunk = value[block * size : (block + 1) * size].clone()  # not a view of all
                setattr(part, name, chunk.requires_grad_())
            part.params = [getattr(part, name) for name in self.param_names]
            parts.append(part)
        return parts


class _LinearNetwork(_Network):
    param_names = ("weight", "bias")

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

    param_names = ("w1", "b1", "w2", "b2")

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
