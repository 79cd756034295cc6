"""L2 logistic regression (``logreg``): a batched, preconditioned subspace Newton solver."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlprobe.probes.base import (
    _MIN_STD,
    FittedProbes,
    _check_finite,
    _derived_seed,
    _LinearNetwork,
    _writeable,
)
from vlprobe.settings import (
    LogregConfig,
)

log = logging.getLogger(__name__)


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
        curve_lengths=torch.cat(iterations).numpy(),
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
