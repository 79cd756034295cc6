"""Probes: batched probes over every layer of a layer-shard and every label at once.

Three kinds, chosen by the config key ``probes.<name>`` (``kind`` inside the entry, default the
name itself); each kind's settings are a dataclass of :mod:`vlprobe.settings`, built from a dict
(unknown keys named), that fits its probes:

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
mini-batch order, dropout masks and the validation slice follow the seed; on CUDA all seeds
of a job train in one batched model, each seed's probes exactly as alone, with its own early
stopping: ``minibatch.batches_seeds``); ``logreg`` has a
unique optimum, so its probes are the same for every seed (zero spread) and only its control
task changes with the seed. The probe table holds one row per (layer, label, seed).

Control task (:func:`control_labels`): per seed, each label's labels are permuted at random
within each *stratum*, a stratum being the rows of one split (train or eval) that belong to
that label's task (mask true). Each label keeps its exact number of positives in each split;
any relation between inputs and labels is gone. The same kind of probe, with the same
settings and seed, is trained on the control training labels (in the same batch as the real
probes: they are independent) and scored on the control evaluation labels.

The package: :mod:`~vlprobe.probes.base` (fitted probes, networks, standardisation),
:mod:`~vlprobe.probes.minibatch` (``linear`` and ``mlp``), :mod:`~vlprobe.probes.logreg` (the
solver), :mod:`~vlprobe.probes.controls` (control labels) and :mod:`~vlprobe.probes.job` (one
layer-shard: :func:`probe_layers`, and the workflow's job, :func:`run_probe_job`).
"""

from vlprobe.metrics import SCORE_SCHEMA
from vlprobe.probes.base import FittedProbes, feature_stats
from vlprobe.probes.controls import control_labels
from vlprobe.probes.job import PROBE_TABLE_SCHEMA, ProbeResults, probe_layers, run_probe_job
from vlprobe.probes.logreg import fit_logreg_probes
from vlprobe.probes.minibatch import fit_linear_probes, fit_mlp_probes

__all__ = [
    "PROBE_TABLE_SCHEMA",
    "SCORE_SCHEMA",
    "FittedProbes",
    "ProbeResults",
    "control_labels",
    "feature_stats",
    "fit_linear_probes",
    "fit_logreg_probes",
    "fit_mlp_probes",
    "probe_layers",
    "run_probe_job",
]
