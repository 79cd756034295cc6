import dataclasses
import inspect
import logging

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression

from vlprobe.metrics import layer_scores, summarise
from vlprobe.probes import (
    PROBE_TABLE_SCHEMA,
    control_labels,
    fit_linear_probes,
    fit_logreg_probes,
    probe_layers,
    run_probe_job,
)
from vlprobe.probes.job import _log_collapsed
from vlprobe.probes.minibatch import fit_seeds
from vlprobe.settings import EvaluationConfig, LinearConfig, LogregConfig, MlpConfig, probe_settings

LAYERS = [4, 5, 6]  # hidden-state indices of the shard; only 5 carries the signal
SIGNAL_POSITION = 1
LABELS = ["cat", "dog", "kite"]
FAST = {"lr": 0.01, "epochs": 40, "batch_size": 64, "dropout": 0.1, "patience": 5, "seeds": [0]}


def _table(*args):
    """The probe table of probe_layers(*args), without bootstrap intervals."""
    return probe_layers(*args, EvaluationConfig(bootstrap=0)).table


def _synthetic(n_train=500, n_eval=300, hidden=12, seed=0):
    """Features [N, 3, hidden] whose middle layer decides the labels; the others are noise.

    Features have a large offset and scale (like raw hidden states) so standardisation matters.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_eval
    x = rng.normal(5.0, 30.0, size=(n, len(LAYERS), hidden)).astype(np.float32)
    directions = rng.standard_normal((hidden, len(LABELS)))
    y = ((x[:, SIGNAL_POSITION] - 5.0) @ directions > 0).astype(np.int8)
    mask = rng.random((n, len(LABELS))) < 0.8
    mask[:, 0] = True
    split = slice(0, n_train), slice(n_train, n)
    return [(x[s], y[s], mask[s]) for s in split]


def _run(train, evaluation, layers=LAYERS, labels=LABELS, **overrides):
    config = LinearConfig.from_dict({**FAST, **overrides})
    return _table(*train, *evaluation, layers, labels, config)


def test_probes_learn_signal_layer_and_stay_at_chance_on_noise():
    train, evaluation = _synthetic()
    table = _run(train, evaluation)

    assert table.schema == PROBE_TABLE_SCHEMA
    assert table.height == len(LAYERS) * len(LABELS)
    assert table["layer"].to_list() == np.repeat(LAYERS, len(LABELS)).tolist()
    assert table["label"].to_list() == LABELS * len(LAYERS)
    accuracy = table.pivot(on="label", index="layer", values="accuracy").sort("layer")
    signal = accuracy.filter(pl.col("layer") == LAYERS[SIGNAL_POSITION]).select(LABELS).row(0)
    assert min(signal) > 0.9
    for noise_layer in (LAYERS[0], LAYERS[2]):
        row = accuracy.filter(pl.col("layer") == noise_layer).select(LABELS).row(0)
        assert max(row) < 0.65
    # counts follow the masks
    (_, y_eval, m_eval), (_, y_train, m_train) = evaluation, train
    first = table.filter(pl.col("layer") == LAYERS[0])
    assert first["n_eval"].to_list() == m_eval.sum(axis=0).tolist()
    assert first["n_eval_pos"].to_list() == (m_eval & (y_eval == 1)).sum(axis=0).tolist()
    assert first["n_train"].to_list() == m_train.sum(axis=0).tolist()
    assert first["n_train_pos"].to_list() == (m_train & (y_train == 1)).sum(axis=0).tolist()


def test_caption_shaped_single_label():
    train, evaluation = _synthetic()
    one_label = [(x, y[:, :1], m[:, :1]) for x, y, m in (train, evaluation)]
    table = _run(*one_label, labels=["entailment"])
    assert table.height == len(LAYERS)
    assert table.filter(pl.col("layer") == LAYERS[SIGNAL_POSITION])["accuracy"].item() > 0.9


def test_masked_out_labels_change_nothing():
    train, evaluation = _synthetic()
    reference = _run(train, evaluation)
    flipped = []
    for x, y, m in (train, evaluation):
        y_changed = np.where(m, y, 1 - y).astype(np.int8)  # flip every masked-out label
        flipped.append((x, y_changed, m))
    assert not np.array_equal(flipped[0][1], train[1])
    assert _run(*flipped).equals(reference)
    # and the mask does matter: without it the counts and scores change
    unmasked = [(x, y, np.ones_like(m)) for x, y, m in flipped]
    assert not _run(*unmasked).equals(reference)


def test_same_seed_same_table_other_seed_differs():
    train, evaluation = _synthetic()
    first = _run(train, evaluation)
    assert _run(train, evaluation).equals(first)
    other = _run(train, evaluation, seeds=[1])
    assert (other["seed"] == 1).all()
    assert other["train_loss"].to_list() != first["train_loss"].to_list()


def test_batched_probes_equal_probes_trained_alone():
    """Each (layer, label) probe gets its own gradient: batching changes no result."""
    train, evaluation = _synthetic()
    together = _run(train, evaluation)
    alone = _run(*[(x, y[:, 2:], m[:, 2:]) for x, y, m in (train, evaluation)], labels=["kite"])
    same = together.filter(pl.col("label") == "kite")
    assert alone["best_epoch"].to_list() == same["best_epoch"].to_list()
    assert alone["accuracy"].to_list() == same["accuracy"].to_list()
    np.testing.assert_allclose(
        np.array(alone["val_loss"].to_list()), np.array(same["val_loss"].to_list()), rtol=1e-4
    )
    # without dropout (whose mask is drawn per layer shard) a single layer matches too
    together = _run(train, evaluation, dropout=0.0)
    single_layer = [(x[:, 1:2], y, m) for x, y, m in (train, evaluation)]
    alone = _run(*single_layer, layers=[LAYERS[1]], dropout=0.0)
    same = together.filter(pl.col("layer") == LAYERS[1])
    assert alone["accuracy"].to_list() == same["accuracy"].to_list()
    assert alone["best_epoch"].to_list() == same["best_epoch"].to_list()


def test_standardisation_uses_training_rows_only():
    (x_train, y_train, m_train), (x_eval, y_eval, m_eval) = _synthetic()
    probes = fit_linear_probes(x_train, y_train, m_train, LinearConfig.from_dict(FAST))
    np.testing.assert_allclose(probes.feature_mean.numpy(), x_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(probes.feature_std.numpy(), x_train.std(axis=0), rtol=1e-5)

    reference = _run((x_train, y_train, m_train), (x_eval, y_eval, m_eval))
    shifted = _run((x_train, y_train, m_train), (x_eval + 1000.0, y_eval, m_eval))
    # training saw nothing of the eval features; only the scores move
    for column in ("train_loss", "val_loss", "best_epoch"):
        assert shifted[column].to_list() == reference[column].to_list()
    assert shifted["accuracy"].to_list() != reference["accuracy"].to_list()


def test_early_stopping_keeps_best_validation_epoch():
    train, evaluation = _synthetic()
    patience = 3
    table = _run(train, evaluation, patience=patience, epochs=60, lr=0.05)
    epochs_run = len(table["train_loss"][0])
    assert epochs_run < 60  # noise layers overfit quickly, so every probe stops early
    for best_epoch, val_loss in table.select("best_epoch", "val_loss").iter_rows():
        assert len(val_loss) == epochs_run
        best = val_loss[best_epoch - 1]
        assert best == min(val_loss[:best_epoch])
        assert all(later >= best for later in val_loss[best_epoch : best_epoch + patience])

    without_validation = _run(train, evaluation, val_fraction=0.0, epochs=7)
    assert (without_validation["best_epoch"] == 7).all()
    assert without_validation["val_loss"].list.len().to_list() == [0] * table.height
    assert without_validation["train_loss"].list.len().to_list() == [7] * table.height


def test_the_compact_studys_probe_runs_every_epoch_on_raw_features():
    """early_stopping: false scores the last epoch's probe; standardize: false feeds the raw
    features (the study's code), which its large offsets make harder to fit at this lr."""
    train, evaluation = _synthetic()
    settings = {"patience": 3, "epochs": 12, "lr": 0.05, "early_stopping": False}
    every_epoch = _run(train, evaluation, **settings)
    assert (every_epoch["best_epoch"] == 12).all()
    assert every_epoch["val_loss"].list.len().to_list() == [12] * every_epoch.height
    assert every_epoch["train_loss"].list.len().to_list() == [12] * every_epoch.height

    config = LinearConfig.from_dict({**FAST, "standardize": False, "epochs": 3})
    x_train, y_train, m_train = train
    raw = fit_linear_probes(x_train, y_train, m_train, config)
    assert (raw.feature_mean == 0).all() and (raw.feature_std == 1).all()
    standardised = fit_linear_probes(x_train, y_train, m_train, LinearConfig.from_dict(FAST))
    assert not np.allclose(raw.logits(x_train[:20]), standardised.logits(x_train[:20]))
    with pytest.raises(ValueError, match="'standardize' must be bool"):
        LinearConfig.from_dict({"standardize": "no"})


def test_probe_config_names_bad_settings():
    assert LinearConfig.from_dict({"lr": 0.1, "weight_decay": 0}).lr == 0.1
    assert LinearConfig.from_dict({"seed": 3}).seeds == (3,)  # shorthand for seeds: [3]
    assert LinearConfig.from_dict({"seeds": [0, 1, 2]}).seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="not both"):
        LinearConfig.from_dict({"seed": 0, "seeds": [1]})
    with pytest.raises(ValueError, match="'seeds' repeats"):
        LinearConfig.from_dict({"seeds": [1, 1]})
    with pytest.raises(ValueError, match="'seeds' must be"):
        LinearConfig.from_dict({"seeds": []})
    with pytest.raises(ValueError, match="learning_rate"):
        LinearConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="'lr'.*1.0e-3"):
        LinearConfig.from_dict({"lr": "1e-3"})
    with pytest.raises(ValueError, match="'epochs'"):
        LinearConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ValueError, match="'dropout' out of range"):
        LinearConfig.from_dict({"dropout": 1.0})


def test_shape_mismatch_is_named():
    train, (x_eval, y_eval, m_eval) = _synthetic()
    with pytest.raises(ValueError, match="m_eval"):
        _run(train, (x_eval, y_eval, m_eval[:, :2]))
    with pytest.raises(ValueError, match="x_train"):
        _run(train, (x_eval, y_eval, m_eval), layers=[0, 1])


# ----------------------------------------------------------------------------- kinds and settings


def test_probe_kinds_from_config_entries():
    assert isinstance(probe_settings("linear", {"lr": 0.1}), LinearConfig)
    logreg = probe_settings("logreg", {"c": 0.5, "seeds": [0, 1]})
    assert isinstance(logreg, LogregConfig) and logreg.c == 0.5 and logreg.seeds == (0, 1)
    mlp = probe_settings("mlp", {"hidden_units": 32, "share_hidden": False})
    assert isinstance(mlp, MlpConfig) and mlp.hidden_units == 32 and not mlp.share_hidden
    # a named variant of a kind
    assert probe_settings("logreg_strong", {"kind": "logreg", "c": 0.01}).c == 0.01
    with pytest.raises(ValueError, match=r"probes\.svm: unknown probe kind 'svm'"):
        probe_settings("svm", {})
    with pytest.raises(ValueError, match=r"probes\.logreg: .*'C'"):
        probe_settings("logreg", {"C": 1.0})  # sklearn's spelling is not ours
    with pytest.raises(ValueError, match="'hidden_units' out of range"):
        probe_settings("mlp", {"hidden_units": 0})
    with pytest.raises(ValueError, match="'share_hidden' must be bool"):
        probe_settings("mlp", {"share_hidden": 1})
    with pytest.raises(ValueError, match="unknown evaluation setting.*'boot'"):
        EvaluationConfig.from_dict({"boot": 10})
    with pytest.raises(ValueError, match="'collapse_threshold' out of range"):
        EvaluationConfig.from_dict({"collapse_threshold": 0.3})


# ----------------------------------------------------------------------------- logreg


def _standardised(x_train, x):
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return (x - mean) / std


def test_logreg_matches_sklearn_per_layer_and_label():
    rng = np.random.default_rng(3)
    n, hidden = 1500, 40
    x = rng.normal(3.0, 8.0, size=(n, 2, hidden)).astype(np.float32)
    x[:, :, :5] += rng.normal(0, 25, size=(n, 1, 5)).astype(np.float32)  # correlated units
    direction = rng.standard_normal(hidden)
    noisy = (x[:, 1] - 3.0) @ direction + rng.normal(0, 40, n)
    y = np.stack([noisy > 0, rng.random(n) < 0.3], axis=1).astype(np.int8)
    mask = np.ones_like(y, bool)
    mask[:400, 1] = False  # the second label's task leaves rows out
    train, evaluate = slice(0, 1000), slice(1000, n)
    config = LogregConfig(c=0.5, tol=1e-6)
    probes = fit_logreg_probes(x[train], y[train], mask[train], config)
    decisions = probes.logits(x[evaluate]) > 0
    for layer in range(2):
        for label in range(2):
            rows = mask[train][:, label]
            features = _standardised(x[train][:, layer], x[:, layer])
            reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(
                features[train][rows], y[train][rows, label]
            )
            np.testing.assert_allclose(
                probes.weight[layer, :, label].numpy(), reference.coef_[0], atol=2e-3
            )
            assert probes.bias[layer, label].item() == pytest.approx(
                reference.intercept_[0], abs=2e-3
            )
            theirs = reference.predict(features[evaluate]) == y[evaluate][:, label]
            ours = decisions[:, layer, label] == y[evaluate][:, label]
            assert abs(ours.mean() - theirs.mean()) <= 0.01
    assert (probes.best_epoch >= 1).all()
    assert probes.val_loss.shape[0] == 0
    # the objective falls monotonically per probe
    curve = probes.train_loss[:, 1, 0]
    assert np.all(np.diff(curve) <= 1e-7)


def test_logreg_one_class_label_predicts_its_class():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2, 6)).astype(np.float32)
    y = np.zeros((200, 2), np.int8)
    y[:, 1] = rng.random(200) < 0.5
    probes = fit_logreg_probes(x, y, np.ones_like(y, bool), LogregConfig())
    logits = probes.logits(x)
    assert (logits[..., 0] < 0).all()  # never seen a positive: always negative
    assert (probes.weight[:, :, 0] == 0).all()
    assert (probes.best_epoch[:, 0] == 0).all()


def test_logreg_probe_table_is_deterministic_across_seeds():
    train, evaluation = _synthetic()
    config = LogregConfig(seeds=(0, 1))
    table = _table(*train, *evaluation, LAYERS, LABELS, config)
    assert table.height == 2 * len(LAYERS) * len(LABELS)
    by_seed = {seed: part for (seed,), part in table.group_by("seed")}
    assert by_seed[0]["accuracy"].to_list() == by_seed[1]["accuracy"].to_list()
    # only the control task changes with the seed
    assert by_seed[0]["control_accuracy"].to_list() != by_seed[1]["control_accuracy"].to_list()
    signal = table.filter(pl.col("layer") == LAYERS[SIGNAL_POSITION])
    assert signal["accuracy"].min() > 0.9
    lengths = table["train_loss"].list.len().to_list()
    assert lengths == table["best_epoch"].to_list()  # one objective value per iteration


# ----------------------------------------------------------------------------- mlp


def test_mlp_learns_what_a_linear_probe_cannot():
    rng = np.random.default_rng(1)
    n, hidden = 1200, 6
    x = rng.normal(size=(n, 1, hidden)).astype(np.float32)
    y = ((x[:, 0, 0] * x[:, 0, 1]) > 0).astype(np.int8)[:, None]  # XOR of two signs
    mask = np.ones_like(y, bool)
    train, evaluation = (x[:900], y[:900], mask[:900]), (x[900:], y[900:], mask[900:])
    settings = {"lr": 0.01, "epochs": 80, "batch_size": 64, "dropout": 0.0, "patience": 10}
    common = (*train, *evaluation, [7], ["entailment"])
    linear = _table(*common, LinearConfig(**settings))
    mlp = _table(*common, MlpConfig(**settings, hidden_units=32))
    assert linear["accuracy"].item() < 0.65
    assert mlp["accuracy"].item() > 0.85


def test_mlp_shared_and_independent_hidden_layers():
    train, evaluation = _synthetic()
    settings = {**FAST, "hidden_units": 8}
    shared = _table(*train, *evaluation, LAYERS, LABELS, MlpConfig.from_dict(settings))
    alone = _table(
        *train,
        *evaluation,
        LAYERS,
        LABELS,
        MlpConfig.from_dict({**settings, "share_hidden": False}),
    )
    for table in (shared, alone):
        signal = table.filter(pl.col("layer") == LAYERS[SIGNAL_POSITION])
        assert signal["accuracy"].min() > 0.85
        assert table.filter(pl.col("layer") != LAYERS[SIGNAL_POSITION])["accuracy"].max() < 0.7
    # a shared network stops as a whole; independent ones per label
    epochs = shared.group_by("layer").agg(pl.col("best_epoch").n_unique())["best_epoch"]
    assert (epochs == 1).all()


# ------------------------------------------------------------------- seeds, control, collapse


def test_control_labels_permute_within_each_label_task():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) < [0.5, 0.1, 0.3, 0.9]).astype(np.int8)
    mask = rng.random((300, 4)) < 0.7
    shuffled = control_labels(labels, mask, seed=5, stratum=0)
    assert ((labels & mask).sum(axis=0) == (shuffled & mask).sum(axis=0)).all()
    assert (shuffled[~mask] == labels[~mask]).all()  # rows outside a task are untouched
    assert (shuffled[mask] != labels[mask]).mean() > 0.1
    assert np.array_equal(shuffled, control_labels(labels, mask, seed=5, stratum=0))
    assert not np.array_equal(shuffled, control_labels(labels, mask, seed=5, stratum=1))


def test_seeds_give_spread_and_control_stays_near_chance():
    train, evaluation = _synthetic()
    one_label = [(x, y[:, :1], m[:, :1]) for x, y, m in (train, evaluation)]
    groups = np.arange(len(one_label[1][0])) // 3  # three rows per image
    config = LinearConfig.from_dict({**FAST, "seeds": [0, 1, 2]})
    results = probe_layers(
        *one_label[0],
        *one_label[1],
        LAYERS,
        ["entailment"],
        config,
        EvaluationConfig(bootstrap=300),
        eval_groups=groups,
    )
    table, scores = results.table, results.scores
    assert table.height == 3 * len(LAYERS)
    assert sorted(table["seed"].unique().to_list()) == [0, 1, 2]
    value = {(r["layer"], r["metric"]): r for r in scores.iter_rows(named=True)}
    signal = LAYERS[SIGNAL_POSITION]
    assert value[(signal, "accuracy")]["value"] > 0.9
    assert value[(signal, "accuracy")]["n_seeds"] == 3
    assert value[(signal, "accuracy")]["std"] > 0  # seeds differ
    assert 0.35 < value[(signal, "control_accuracy")]["value"] < 0.65  # shuffled: chance
    assert value[(signal, "selectivity_accuracy")]["value"] > 0.3
    for (_, metric), row in value.items():
        if row["ci_low"] is not None:
            assert row["ci_low"] <= row["value"] + 1e-9 <= row["ci_high"] + 2e-9, metric
    # a noise layer is at chance, its selectivity near zero
    assert abs(value[(LAYERS[0], "selectivity_accuracy")]["value"]) < 0.15


def _seeds_task():
    """Per seed: the real labels and that seed's control side by side, and a label ('kite')
    on four rows only, none of them in seeds 0 and 1's validation slices (seed 2 has some)."""
    (x, y, m), evaluation = _synthetic()
    m = m.copy()
    m[:, 2] = False
    m[3:7, 2] = True
    labels = [np.concatenate([y, control_labels(y, m, seed, 0)], axis=1) for seed in (0, 1, 2)]
    return x, labels, [np.concatenate([m, m], axis=1)] * 3, evaluation


SEEDS_CONFIGS = {  # early stopping on, dropout on, a seed stopping before the others
    "linear": LinearConfig.from_dict({**FAST, "lr": 0.05, "patience": 2, "epochs": 60}),
    "mlp": MlpConfig.from_dict({**FAST, "lr": 0.05, "patience": 2, "hidden_units": 4}),
    "mlp_per_label": MlpConfig.from_dict(
        {**FAST, "lr": 0.05, "patience": 2, "epochs": 60, "hidden_units": 4, "share_hidden": False}
    ),
}


@pytest.mark.parametrize("kind", SEEDS_CONFIGS)
def test_seeds_batched_in_one_model_equal_seeds_fitted_alone(kind):
    """One model for every seed changes no seed's probes: its own validation slice, batches,
    dropout masks, initialisation and early stopping; a seed that stops keeps its probes, those
    without validation rows included (they follow the latest weights while the seed runs)."""
    x, labels, masks, _ = _seeds_task()
    config, seeds = SEEDS_CONFIGS[kind], [0, 1, 2]
    alone = fit_seeds(x, labels, masks, config, seeds, n_sets=2, batched=False)
    together = fit_seeds(x, labels, masks, config, seeds, n_sets=2, batched=True)

    lengths = [len(fit.train_loss) for fit in alone]
    without_val = [np.isnan(fit.val_loss).all(axis=(0, 1))[[2, 5]].all() for fit in alone]
    assert without_val == [True, True, False]  # 'kite' and its control, in seeds 0 and 1
    assert min(lengths) < max(lengths)  # the batch runs on after a seed has stopped
    assert lengths[0] < max(lengths) or lengths[1] < max(lengths)
    for one, batched in zip(alone, together, strict=True):
        assert batched.best_epoch.tolist() == one.best_epoch.tolist()
        for curve in ("train_loss", "val_loss"):
            mine, theirs = getattr(batched, curve), getattr(one, curve)
            assert mine.shape == theirs.shape
            np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
        assert one.network.param_names == batched.network.param_names
        for mine, theirs in zip(batched.network.params, one.network.params, strict=True):
            np.testing.assert_allclose(mine.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.logits(x[:100]), one.logits(x[:100]), atol=1e-4)
    # seeds differ, so that the comparison above compares different fits
    assert not np.allclose(alone[0].logits(x[:100]), alone[1].logits(x[:100]))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_table_is_the_same_with_seeds_batched(kind, monkeypatch):
    import vlprobe.probes.minibatch as minibatch

    assert not minibatch.batches_seeds("cpu") and minibatch.batches_seeds("cuda:1")
    x, _, masks, evaluation = _seeds_task()
    m = masks[0][:, : len(LABELS)]
    y = _synthetic()[0][1]
    config = dataclasses.replace(SEEDS_CONFIGS[kind], seeds=(0, 1, 2))
    fits = []
    fit = minibatch._fit_minibatch

    def counted(*args, **kwargs):
        fits.append(len(inspect.signature(fit).bind(*args, **kwargs).arguments["seeds"]))
        return fit(*args, **kwargs)

    monkeypatch.setattr(minibatch, "_fit_minibatch", counted)
    tables = {}
    for batched in (False, True):
        monkeypatch.setattr(minibatch, "batches_seeds", lambda device, batched=batched: batched)
        tables[batched] = _table(x, y, m, *evaluation, LAYERS, LABELS, config)
    assert fits == [1, 1, 1, 3]
    per_seed, batched = tables[False], tables[True]
    assert batched.schema == per_seed.schema == PROBE_TABLE_SCHEMA
    assert batched["train_loss"].list.len().unique().len() > 1  # seeds stop at different epochs
    exact = [c for c, dtype in PROBE_TABLE_SCHEMA.items() if dtype != pl.List(pl.Float64)]
    assert batched.select(exact).equals(per_seed.select(exact))
    for curve in ("train_loss", "val_loss"):
        assert batched[curve].list.len().equals(per_seed[curve].list.len())
        np.testing.assert_allclose(
            batched[curve].explode().to_numpy(), per_seed[curve].explode().to_numpy(), rtol=1e-5
        )


def test_collapsed_probes_are_flagged_and_logged(caplog):
    train, evaluation = _synthetic()
    one_label = [(x.copy(), y[:, :1], m[:, :1]) for x, y, m in (train, evaluation)]
    for x, _, _ in one_label:
        x[:, 0] = 1.0  # a constant layer: the probe can only answer one class
    results = probe_layers(
        *one_label[0],
        *one_label[1],
        LAYERS,
        ["entailment"],
        LinearConfig.from_dict(FAST),
        EvaluationConfig(bootstrap=0),
    )
    collapsed = dict(results.table.select("layer", "collapsed").iter_rows())
    assert collapsed == {LAYERS[0]: True, LAYERS[1]: False, LAYERS[2]: False}
    flags = results.scores.filter(pl.col("metric") == "collapsed")
    assert dict(flags.select("layer", "value").iter_rows())[LAYERS[0]] == 1.0
    keys = {"model": "m", "task": "caption", "prompt": "tao", "pooling": "mean", "probe": "linear"}
    with caplog.at_level(logging.WARNING, logger="vlprobe.probes"):
        _log_collapsed(results.scores, keys)
    assert f"m/caption/tao/mean/linear: layer {LAYERS[0]} collapsed" in caplog.text
    assert f"layer {LAYERS[1]} collapsed" not in caplog.text


def test_probe_job_writes_table_and_scores_resampling_images(tmp_path, caplog, monkeypatch):
    from vlprobe.storage import write_activations
    from vlprobe.tasks import write_task

    rng = np.random.default_rng(0)
    n_images, per_image, hidden = 60, 4, 8
    image_id = np.repeat(np.arange(n_images) + 1000, per_image)
    label = np.tile([1, 0, 1, 0], n_images).astype(np.int8)
    sample_id = np.arange(len(image_id)) + 7
    task = pl.DataFrame(
        {
            "sample_id": sample_id,
            "image_id": image_id,
            "split": np.where(image_id < 1040, "train", "eval"),
            "text": ["t"] * len(image_id),
            "label": label,
        }
    )
    metadata = {"kind": "caption", "prompt": "tao", "label_names": ["entailment"]}
    write_task(task, tmp_path / "caption-tao.parquet", metadata)
    features = rng.normal(size=(len(sample_id), 3, hidden)).astype(np.float32)
    features[:, 1, 0] += 3 * (2 * label - 1)  # layer 1 carries the label
    features[:, 0] = 0.0  # layer 0 is constant: its probe collapses
    parts = []
    for part, rows in enumerate((slice(0, 120), slice(120, None))):
        part_dir = tmp_path / f"part-{part}"
        order = np.arange(len(sample_id))[rows][::-1]  # stored out of task order
        write_activations(
            part_dir / "layers-0-2.parquet",
            sample_id[order],
            [0, 1, 2],
            {"mean": features[order]},
            {},
        )
        parts.append(part_dir)
    out, scores_path = tmp_path / "probe.parquet", tmp_path / "scores.parquet"
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return layer_scores(*args, **kwargs)

    monkeypatch.setattr("vlprobe.probes.job.layer_scores", spy)
    with caplog.at_level(logging.WARNING, logger="vlprobe.probes"):
        results = run_probe_job(
            tmp_path / "caption-tao.parquet",
            parts,
            (0, 2),
            "mean",
            "logreg",
            {"c": 1.0, "seeds": [0, 1]},
            "tiny",
            out,
            evaluation={"bootstrap": 200},
            scores_path=scores_path,
        )
    table, scores = pl.read_parquet(out), pl.read_parquet(scores_path)
    assert table.equals(results.table) and scores.equals(results.scores)
    assert table.columns[:5] == ["model", "task", "prompt", "pooling", "probe"]
    assert table.row(0, named=True)["probe"] == "logreg"
    assert table.height == 3 * 2  # layers x seeds
    value = {(r["layer"], r["metric"]): r for r in scores.iter_rows(named=True)}
    assert value[(1, "accuracy")]["value"] > 0.95
    assert value[(0, "collapsed")]["value"] == 1.0
    assert "tiny/caption/tao/mean/logreg: layer 0 collapsed" in caplog.text
    # the bootstrap resamples the 20 eval images (4 rows each), in the eval rows' order
    assert seen["groups"].tolist() == np.repeat(np.arange(1040, 1060), per_image).tolist()
    assert seen["n_boot"] == 200
    low, high = value[(2, "accuracy")]["ci_low"], value[(2, "accuracy")]["ci_high"]
    assert low < value[(2, "accuracy")]["value"] < high
    summary = summarise([scores])
    assert summary.filter(pl.col("layer") == 0)["collapsed"].all()
