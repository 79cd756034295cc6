"""Probe speed. Two cases (``--case``):

``logreg`` (default): sklearn's LogisticRegression layer by layer against vlprobe's batched
logreg.

    .venv/bin/python benchmarks/probes.py [--rows 20000] [--layers 29] [--hidden 1536]
        [--eval-fraction 0.2] [--c 1.0] [--threads 2] [--activations results/activations]

Both sides fit the same model (L2 logistic regression, sklearn's objective with C = ``--c``,
gradient tolerance 1e-4) on the same standardised features, and both are timed from the same
float16 feature array ``[rows, layers, hidden]`` to eval predictions, conversions included:

  (a) the straightforward implementation: per layer, ``StandardScaler`` and
      ``LogisticRegression(C, tol=1e-4, max_iter=1000)`` (lbfgs), then ``predict``;
  (b) vlprobe: ``fit_logreg_probes`` over all layers at once, then ``FittedProbes.logits``.

Data: (1) a synthetic binary task shaped like residual-stream hidden states (power-law
spectrum in a random basis per layer update, a few massive outlier units shared by all layers,
7 % label noise, a label signal that grows with depth: eval accuracy from chance to ~0.9);
(2) the demo's caption-task activations under ``--activations`` if they exist (skipped
otherwise; object tasks are not compared). Per layer it prints both eval accuracies and their
difference, and the iterations each solver ran; then both wall times. The last line is
``ratio: <sklearn time over vlprobe time>`` for the synthetic task.

``seeds``: one probe job's seeds fitted one after another against all in one batched model
(``fit_seeds(..., batched=False / True)``), on the CPU.

    PYTHONPATH=src .venv/bin/python benchmarks/probes.py --case seeds [--threads 2]
        [--object-rows 2500] [--caption-rows 5000] [--layers 4] [--hidden 1536]
        [--probe linear] [--config config/config.yaml]

The probe's settings are the config's ``probes.<--probe>`` (paper: linear, seeds [0, 1, 2])
with the control on, so every seed fits its real and its own control labels side by side, as
``probe_layers`` does. Shapes: the object task (80 labels, every row in every label's task, as
NoCat's; 160 label columns with the control) and the caption task (1 label), ``--layers``
layers (a shard of ``extract.layers_per_shard``) of ``--hidden`` units, features as
paper_scale.py synthesises them (90 % train rows). Each (shape, mode) runs in its own
subprocess, so that its peak memory is its own: the peak RSS of the fit above the RSS before
it (VmHWM reset through /proc/self/clear_refs), the features already in memory. Per shape it
prints each mode's wall and CPU time, epochs run per seed and peak, then the ratio (per-seed
time over batched time) and the largest differences between the two: parameters, eval logits,
eval decisions and best epochs. The last line is ``ratio: ...`` per shape. Measured here (2
shared cores, load 2.5-3.7): object 97.5 s per seed vs 79.7 s batched (1.22x; 254 vs 460 MB
peak), caption 79.2 s vs 77.4 s (1.02x; 186 vs 242 MB); repeated short runs put both within
noise, hence per-seed fits on the CPU (``minibatch.batches_seeds``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.fft import dct
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vlprobe.probes import control_labels, fit_logreg_probes
from vlprobe.probes.minibatch import fit_seeds
from vlprobe.settings import LogregConfig, probe_settings
from vlprobe.storage import read_activations
from vlprobe.tasks import label_matrix, read_task

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def synthetic_task(
    rows: int, layers: int, hidden: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[rows, layers, hidden]`` float16 and 0/1 labels ``[rows]``; see module doc."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    labels = rng.integers(0, 2, rows).astype(np.int8)
    sign = (2.0 * labels - 1).astype(np.float32)
    sign[rng.random(rows) < 0.07] *= -1  # label noise
    scales = np.arange(1, hidden + 1, dtype=np.float32) ** -0.5  # power-law spectrum
    n_signal = 48  # the label lives in a few leading directions, among item-specific noise
    item = rng.standard_normal((rows, n_signal), dtype=np.float32)
    outliers = rng.choice(hidden, 4, replace=False)  # "massive activations"
    features = np.empty((rows, layers, hidden), np.float16)
    state = np.zeros((rows, hidden), np.float32)
    for layer in range(layers):
        depth = layer / max(layers - 1, 1)
        update = torch.randn(rows, hidden, generator=generator).numpy()
        update[:, :n_signal] += (sign[:, None] * (0.03 + 0.35 * depth**1.5) + item) * 3
        update *= scales * rng.choice(np.array([-1, 1], np.float32), hidden)
        # a random rotation per layer update (orthonormal DCT after random signs)
        state = 0.6 * state + dct(update, axis=1, norm="ortho", workers=1)
        features[:, layer] = state
        features[:, layer, outliers] = state[:, outliers] * 40 + 60
    return features, labels


def sklearn_layers(x_train, y_train, x_eval, c: float) -> tuple[np.ndarray, list[int]]:
    """Eval predictions ``[eval rows, layers]`` of one sklearn pipeline per layer."""
    predictions, iterations = [], []
    for layer in range(x_train.shape[1]):
        scaler = StandardScaler()
        train = scaler.fit_transform(x_train[:, layer].astype(np.float32))
        model = LogisticRegression(C=c, tol=TOL, max_iter=1000).fit(train, y_train)
        evaluate = scaler.transform(x_eval[:, layer].astype(np.float32))
        predictions.append(model.predict(evaluate))
        iterations.append(int(model.n_iter_[0]))
    return np.stack(predictions, axis=1), iterations


def vlprobe_layers(x_train, y_train, x_eval, c: float) -> tuple[np.ndarray, list[int]]:
    """Eval predictions ``[eval rows, layers]`` of the batched logreg probes."""
    labels = y_train[:, None]
    probes = fit_logreg_probes(x_train, labels, np.ones_like(labels, bool), LogregConfig(c=c))
    decisions = probes.logits(x_eval)[..., 0] > 0
    return decisions, probes.best_epoch[:, 0].tolist()


def compare(name, x_train, y_train, x_eval, y_eval, c, layer_names=None) -> tuple[float, float]:
    """Fit both, print the per-layer table, return (sklearn seconds, vlprobe seconds)."""
    start = time.perf_counter()
    ours, our_iterations = vlprobe_layers(x_train, y_train, x_eval, c)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs, their_iterations = sklearn_layers(x_train, y_train, x_eval, c)
    theirs_seconds = time.perf_counter() - start

    accuracy_ours = (ours == y_eval[:, None]).mean(axis=0)
    accuracy_theirs = (theirs == y_eval[:, None]).mean(axis=0)
    agreement = (ours == theirs).mean(axis=0)
    print(f"\n{name}")
    print(
        f"{'layer':>5} {'sklearn acc':>11} {'vlprobe acc':>11} {'diff (pt)':>9} "
        f"{'agree':>6} {'sk iter':>7} {'vl iter':>7}"
    )
    layer_names = layer_names or list(range(x_train.shape[1]))
    for j, layer in enumerate(layer_names):
        diff = 100 * (accuracy_ours[j] - accuracy_theirs[j])
        print(
            f"{layer:>5} {accuracy_theirs[j]:>11.4f} {accuracy_ours[j]:>11.4f} {diff:>+9.2f} "
            f"{agreement[j]:>6.3f} {their_iterations[j]:>7} {our_iterations[j]:>7}"
        )
    worst = 100 * np.abs(accuracy_ours - accuracy_theirs).max()
    print(f"largest accuracy difference: {worst:.2f} points over {len(layer_names)} layers")
    print(f"sklearn layer by layer: {theirs_seconds:.2f} s")
    print(f"vlprobe batched logreg: {ours_seconds:.2f} s")
    print(f"speed-up: {theirs_seconds / ours_seconds:.1f}x")
    return theirs_seconds, ours_seconds


def demo_activations(root: Path, c: float) -> None:
    """The demo's caption tasks, if their activations exist (skipped otherwise)."""
    tasks_dir = root.parent / "tasks"
    # the configured models only: baselines ('<model>@<baseline>') repeat a model's shape
    found = [p for p in sorted(root.glob("*/caption-*")) if "@" not in p.parent.name]
    if not root.is_dir() or not found:
        print(f"\n(b) demo activations: none under {root}; skipped")
        return
    for task_dir in found:
        model, task = task_dir.parent.name, task_dir.name
        task_path = tasks_dir / f"{task}.parquet"
        parts = sorted(task_dir.glob("part-*"))
        shards = sorted({p.name for part in parts for p in part.glob("layers-*.parquet")})
        if not task_path.exists() or not shards:
            print(f"\n(b) {model}/{task}: task table or shards missing; skipped")
            continue
        table, metadata = read_task(task_path)
        sample_ids, labels, _, _ = label_matrix(table, metadata)
        blocks, layers = [], []
        pooling = "mean"
        for shard in sorted(shards, key=lambda s: int(s.split("-")[1])):
            ids, shard_layers, features = read_activations([p / shard for p in parts], pooling)
            row_of = {int(i): r for r, i in enumerate(ids)}
            blocks.append(features[[row_of[int(i)] for i in sample_ids]])
            layers += shard_layers.tolist()
        features = np.concatenate(blocks, axis=1).astype(np.float16)
        train = (table["split"] == "train").to_numpy()
        evaluate = ~train
        compare(
            f"(b) demo activations {model}/{task} ({pooling} pooling): {int(train.sum())} train, "
            f"{int(evaluate.sum())} eval rows, {features.shape[1]} layers x {features.shape[2]}",
            features[train],
            labels[train, 0],
            features[evaluate],
            labels[evaluate, 0],
            c,
            layers,
        )


def seeds_shape(kind: str, rows: int, layers: int, hidden: int):
    """Train features, per-seed label columns (real and control) and masks, eval features."""
    from paper_scale import synthetic_features  # the paper-scale rehearsal's generator

    rng = np.random.default_rng(5)
    n_labels = 80 if kind == "object" else 1
    if kind == "object":  # COCO-like: a frequent category, the rest by a power law
        frequency = np.clip(0.5 / np.arange(1, n_labels + 1) ** 0.8, 0.01, None)
        labels = (rng.random((rows, n_labels)) < frequency).astype(np.int8)
        images = np.arange(rows)  # NoCat: one row per image
    else:  # a positive and its hard negative per image
        labels = np.tile([1, 0], rows // 2 + 1)[:rows, None].astype(np.int8)
        images = np.arange(rows) // 2
    features = synthetic_features(labels, images, layers, hidden, seed=0)
    n_train = round(0.9 * rows)
    return features[:n_train], labels[:n_train], features[n_train:]


def child_seeds(spec: dict) -> None:
    """One (shape, mode) of the seeds case in this process; prints one JSON line."""
    torch.set_num_threads(spec["threads"])
    config = probe_settings(spec["probe"], spec["settings"])
    x_train, y_train, x_eval = seeds_shape(
        spec["kind"], spec["rows"], spec["layers"], spec["hidden"]
    )
    mask = np.ones_like(y_train, bool)
    labels = [
        np.concatenate([y_train, control_labels(y_train, mask, s, 0)], 1) for s in config.seeds
    ]
    masks = [np.concatenate([mask, mask], axis=1)] * len(labels)
    with open("/proc/self/clear_refs", "w") as refs:  # the peak from here on
        refs.write("5")
    before = _status_kb("VmRSS")
    with threadpool_limits(spec["threads"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        fits = fit_seeds(x_train, labels, masks, config, config.seeds, 2, batched=spec["batched"])
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kb("VmHWM")
    np.savez(
        spec["out"],
        logits=np.stack([fit.logits(x_eval) for fit in fits]),
        best_epoch=np.stack([fit.best_epoch for fit in fits]),
        **{
            f"{name}_{index}": param.detach().numpy()
            for index, fit in enumerate(fits)
            for name, param in zip(fit.network.param_names, fit.network.params, strict=True)
        },
    )
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "epochs": [len(fit.train_loss) for fit in fits],
        "peak_mb": (peak - before) / 1024,
        "rss_before_mb": before / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def seeds_case(args) -> list[str]:
    """Per-seed against batched fits for the object and the caption shape; see the module doc."""
    import yaml

    settings = yaml.safe_load(args.config.read_text())["probes"][args.probe]
    config = probe_settings(args.probe, settings)
    print(f"probes.{args.probe}: {config.to_dict()}, control on, on the CPU")
    ratios = []
    shapes = [("object", args.object_rows), ("caption", args.caption_rows)]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, rows in shapes:
            results, arrays = {}, {}
            for batched in (False, True):
                out = Path(tmp) / f"{kind}-{batched}.npz"
                spec = {
                    "kind": kind,
                    "rows": rows,
                    "layers": args.layers,
                    "hidden": args.hidden,
                    "probe": args.probe,
                    "settings": settings,
                    "threads": args.threads,
                    "batched": batched,
                    "out": str(out),
                }
                script = [sys.executable, __file__, "--child", json.dumps(spec)]
                done = subprocess.run(script, capture_output=True, text=True, check=True)
                line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
                results[batched] = json.loads(line[len("RESULT ") :])
                arrays[batched] = dict(np.load(out))
            n_labels = 80 if kind == "object" else 1
            print(
                f"\n{kind} shape: {round(0.9 * rows)} train rows x {args.layers} layers x "
                f"{args.hidden} hidden, {n_labels} label(s) + control, seeds {list(config.seeds)}"
            )
            for batched, name in ((False, "per seed"), (True, "batched ")):
                r = results[batched]
                print(
                    f"  {name}: {r['seconds']:7.2f} s ({r['cpu_seconds']:.1f} CPU s), epochs per "
                    f"seed {r['epochs']}, peak "
                    f"{r['peak_mb']:7.1f} MB above {r['rss_before_mb']:.0f} MB before the fit"
                )
            one, together = arrays[False], arrays[True]
            params = max(
                float(np.abs(one[k] - together[k]).max())
                for k in one
                if k not in ("logits", "best_epoch")
            )
            logits = float(np.abs(one["logits"] - together["logits"]).max())
            decisions = float(((one["logits"] > 0) != (together["logits"] > 0)).mean())
            epochs = int((one["best_epoch"] != together["best_epoch"]).sum())
            ratio = results[False]["seconds"] / results[True]["seconds"]
            print(
                f"  ratio (per seed / batched): {ratio:.2f}; max |difference|: parameters "
                f"{params:.2e}, eval logits {logits:.2e}; decisions differing {decisions:.2e}; "
                f"best epochs differing {epochs} of {one['best_epoch'].size}"
            )
            ratios.append(f"{kind} {ratio:.2f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["logreg", "seeds"], default="logreg")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--layers", type=int, default=None, help="logreg: 29, seeds: 4")
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--activations", type=Path, default=Path("results/activations"))
    parser.add_argument("--object-rows", type=int, default=2_500)
    parser.add_argument("--caption-rows", type=int, default=5_000)
    parser.add_argument("--probe", default="linear")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one run of the seeds case
    args = parser.parse_args()
    if args.child:
        child_seeds(json.loads(args.child))
        return
    torch.set_num_threads(args.threads)
    print(
        f"threads: {args.threads} (torch and BLAS), load average at start: {os.getloadavg()[0]:.2f}"
    )
    if args.case == "seeds":
        args.layers = args.layers or 4
        ratios = seeds_case(args)
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
        print(f"ratio: {', '.join(ratios)}")
        return
    args.layers = args.layers or 29
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        features, labels = synthetic_task(args.rows, args.layers, args.hidden)
        n_eval = round(args.eval_fraction * args.rows)
        n_train = args.rows - n_eval
        print(
            f"(a) synthetic task: {args.rows} rows ({n_train} train, {n_eval} eval) x "
            f"{args.layers} layers x {args.hidden} hidden, float16 "
            f"({features.nbytes / 2**30:.2f} GiB), made in {time.perf_counter() - start:.1f} s"
        )
        theirs, ours = compare(
            "(a) synthetic residual-stream task",
            features[:n_train],
            labels[:n_train],
            features[n_train:],
            labels[n_train:],
            args.c,
        )
        del features
        demo_activations(args.activations, args.c)
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(f"ratio: {theirs / ours:.2f}")


if __name__ == "__main__":
    main()
