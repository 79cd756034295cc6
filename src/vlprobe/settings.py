"""What the workflow checks and names before any job runs: probe and evaluation settings, and
the registered figures.

Nothing here imports torch, transformers or altair, so parsing the workflow (every dry run, DAG
and cluster job step) stays light. The dataclasses are the one source of each setting's default
and range; the config schema checks the config's shape and leaves probe and evaluation entries
to them. A probe config fits itself (:meth:`LinearConfig.fit`), importing the fitting code only
then, and a figure draws itself with its function in :mod:`vlprobe.figures`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import altair as alt
    import numpy as np
    import polars as pl

    from vlprobe.probes.base import FittedProbes


def _check_seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list | tuple)
        or not value
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)
    ):
        raise ValueError(
            f"probe setting 'seeds' must be a non-empty list of integers >= 0, got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ValueError(f"probe setting 'seeds' repeats a seed: {list(value)}")
    return tuple(value)


@dataclass(frozen=True)
class _Settings:
    """Validated settings built from a plain mapping; a wrong key, type or range is named."""

    what: ClassVar[str] = "probe setting"
    kind: ClassVar[str | None] = None  # a probe's kind (``probes.<name>.kind``)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "seeds":
                object.__setattr__(self, "seeds", _check_seeds(value))
                continue
            kind = type(field.default)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:  # int settings take ints; float settings take either
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok:
                hint = " (YAML reads 1e-3 as text; write 1.0e-3)" if isinstance(value, str) else ""
                raise ValueError(
                    f"{self.what} {field.name!r} must be {kind.__name__}, got {value!r}{hint}"
                )
        for name, ok in self._ranges().items():
            if not ok:
                raise ValueError(f"{self.what} {name!r} out of range: {getattr(self, name)!r}")

    def _ranges(self) -> dict[str, bool]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults included, as plain values (a rule's params: writing out a
        default changes nothing, changing a default in code reruns what it changes)."""
        values = {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }
        return {"kind": self.kind, **values} if self.kind else values

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]):
        """Build from a plain mapping; an unknown key raises ValueError naming it.

        ``seed: <int>`` is accepted as shorthand for ``seeds: [<int>]``.
        """
        settings = {k: v for k, v in settings.items() if k != "kind"}
        known = [field.name for field in dataclasses.fields(cls)]
        if "seed" in settings and "seed" not in known and "seeds" in known:
            if "seeds" in settings:
                raise ValueError(f"give {cls.what} 'seeds' or 'seed', not both")
            settings["seeds"] = [settings.pop("seed")]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.what}(s) {unknown}; known settings: {known}")
        return cls(**settings)


@dataclass(frozen=True)
class LinearConfig(_Settings):
    """Hyperparameters of the linear probe (config key ``probes.linear``)."""

    kind: ClassVar[str] = "linear"
    # True for a probe with one optimum: the same probes for every seed (fitted once per job)
    seed_independent: ClassVar[bool] = False
    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 256
    dropout: float = 0.1  # on the probe's input features
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    patience: int = 5
    seeds: tuple[int, ...] = (0,)
    # false: the raw features, as the compact-model study's code fed them
    standardize: bool = True
    # false: every epoch runs and the last epoch's probe is scored (the compact-model study's
    # code); true: each probe keeps its best epoch on the validation slice, patience epochs on
    early_stopping: bool = True

    # the fits run on the device the probe job is given (logreg's solver stays on the CPU)
    on_device: ClassVar[bool] = True

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray,
        seed: int,
        n_sets: int,
        device: str = "cpu",
    ) -> FittedProbes:
        """Probes per (layer, label) on ``features [N, layers, hidden]``; ``labels`` and ``mask``
        ``[N, n_sets * labels]`` hold ``n_sets`` label sets (real, control) side by side."""
        return self.fit_seeds(features, [labels], [mask], [seed], n_sets, device)[0]

    def fit_seeds(
        self,
        features: np.ndarray,
        labels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        seeds: Sequence[int],
        n_sets: int,
        device: str = "cpu",
    ) -> list[FittedProbes]:
        """:meth:`fit` for each seed of ``seeds`` on its own ``labels[i]``/``masks[i]``, in one
        batched model where the device makes that pay (``probes.minibatch.batches_seeds``).
        The fitting code is imported here, so that importing the settings imports no torch."""
        from vlprobe.probes.minibatch import fit_seeds

        return fit_seeds(features, labels, masks, self, seeds, n_sets, device)

    def _ranges(self) -> dict[str, bool]:
        return {
            "lr": self.lr > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "dropout": 0 <= self.dropout < 1,
            "weight_decay": self.weight_decay >= 0,
            "val_fraction": 0 <= self.val_fraction < 1,
            "patience": self.patience >= 1,
        }


@dataclass(frozen=True)
class MlpConfig(LinearConfig):
    """Hyperparameters of the one-hidden-layer probe (``probes.mlp``); see the module doc."""

    kind: ClassVar[str] = "mlp"
    hidden_units: int = 128
    share_hidden: bool = True  # one hidden layer per (layer, label set); false: per label

    def _ranges(self) -> dict[str, bool]:
        return {**super()._ranges(), "hidden_units": self.hidden_units >= 1}


@dataclass(frozen=True)
class LogregConfig(_Settings):
    """L2 logistic regression (``probes.logreg``), sklearn's ``LogisticRegression`` objective.

    ``c`` is sklearn's C (inverse penalty strength), ``tol`` its gradient tolerance (a probe
    stops when every component of its gradient is at most ``tol``), ``max_iter`` the iteration
    limit, ``precondition_rank`` the number of leading covariance directions per layer that
    the solver's preconditioner rescales (0: none).
    """

    kind: ClassVar[str] = "logreg"
    seed_independent: ClassVar[bool] = True
    c: float = 1.0
    tol: float = 1e-4
    max_iter: int = 200
    precondition_rank: int = 128
    seeds: tuple[int, ...] = (0,)

    on_device: ClassVar[bool] = False  # its solver is bound by memory traffic: the CPU's

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray,
        seed: int,
        n_sets: int,
        device: str = "cpu",
    ) -> FittedProbes:
        """The same probes for every seed: the problem has one optimum (on the CPU whatever
        ``device`` says)."""
        from vlprobe.probes.logreg import fit_logreg_probes

        return fit_logreg_probes(features, labels, mask, self)

    def _ranges(self) -> dict[str, bool]:
        return {
            "c": self.c > 0,
            "tol": self.tol > 0,
            "max_iter": self.max_iter >= 1,
            "precondition_rank": self.precondition_rank >= 0,
        }


@dataclass(frozen=True)
class EvaluationConfig(_Settings):
    """How probes are scored (config section ``evaluation``).

    ``bootstrap``: resamples of the evaluation images for the intervals (0: none);
    ``confidence``: the intervals' level; ``control``: train and score control probes;
    ``collapse_threshold``: a probe whose balanced majority fraction reaches it is collapsed;
    ``seed``: the resampling seed.
    """

    what: ClassVar[str] = "evaluation setting"
    bootstrap: int = 1000
    confidence: float = 0.95
    control: bool = True
    collapse_threshold: float = 0.95
    seed: int = 0

    def _ranges(self) -> dict[str, bool]:
        return {
            "bootstrap": self.bootstrap >= 0,
            "confidence": 0 < self.confidence < 1,
            "collapse_threshold": 0.5 <= self.collapse_threshold <= 1,
            "seed": self.seed >= 0,
        }


PROBE_KINDS: dict[str, type[_Settings]] = {
    "linear": LinearConfig,
    "logreg": LogregConfig,
    "mlp": MlpConfig,
}
AnyProbeConfig = LinearConfig | MlpConfig | LogregConfig


def probe_settings(name: str, settings: Mapping[str, Any]) -> AnyProbeConfig:
    """The settings of config entry ``probes.<name>``: kind ``settings['kind']`` or ``name``."""
    kind = settings.get("kind", name)
    if kind not in PROBE_KINDS:
        raise ValueError(
            f"probes.{name}: unknown probe kind {kind!r}; supported: {sorted(PROBE_KINDS)}"
        )
    try:
        return PROBE_KINDS[kind].from_dict(settings)
    except ValueError as err:
        raise ValueError(f"probes.{name}: {err}") from err


@dataclass(frozen=True)
class Figure:
    """A registered figure: the name of the :mod:`vlprobe.figures` function drawing it, and the
    frame it reads.

    ``input`` is ``"summary"`` (the tidy summary, ``results/metrics/summary.parquet``) or
    ``"probes"`` (every probe table concatenated, ``pl.concat(..., how="diagonal_relaxed")``).
    Calling a Figure calls its function.
    """

    draw: str
    input: Literal["summary", "probes"]

    def __call__(self, frame: pl.DataFrame, **style: Any) -> alt.TopLevelMixin:
        return getattr(importlib.import_module("vlprobe.figures"), self.draw)(frame, **style)


# figure name -> Figure (the workflow's `figure` rule draws each from its input)
FIGURES: dict[str, Figure] = {
    "caption_accuracy": Figure("caption_accuracy_chart", "summary"),
    "object_f1": Figure("object_f1_chart", "summary"),
    "object_prompts": Figure("object_prompts_chart", "summary"),
    "caption_scores": Figure("caption_scores_heatmap", "summary"),
    "loss_curves": Figure("loss_curves_chart", "probes"),
    "selectivity": Figure("selectivity_chart", "summary"),
    "baselines": Figure("baselines_chart", "summary"),
    "category_f1": Figure("category_f1_heatmap", "probes"),
}
