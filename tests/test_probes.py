import numpy as np
import polars as pl
import pytest

from vlprobe.probes import (
    PROBE_TABLE_SCHEMA,
    ProbeConfig,
    fit_linear_probes,
    train_and_evaluate,
)

LAYERS = [4, 5, 6]  # hidden-state indices of the shard; only 5 carries the signal
SIGNAL_POSITION = 1
LABELS = ["cat", "dog", "kite"]
FAST = {"lr": 0.01, "epochs": 40, "batch_size": 64, "dropout": 0.1, "patience": 5, "seed": 0}


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
    config = ProbeConfig.from_dict({**FAST, **overrides})
    return train_and_evaluate(*train, *evaluation, layers, labels, config)


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
    other = _run(train, evaluation, seed=1)
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
    probes = fit_linear_probes(x_train, y_train, m_train, ProbeConfig.from_dict(FAST))
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


def test_probe_config_names_bad_settings():
    assert ProbeConfig.from_dict({"lr": 0.1, "weight_decay": 0}).lr == 0.1
    with pytest.raises(ValueError, match="learning_rate"):
        ProbeConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="'lr'.*1.0e-3"):
        ProbeConfig.from_dict({"lr": "1e-3"})
    with pytest.raises(ValueError, match="'epochs'"):
        ProbeConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ValueError, match="'dropout' out of range"):
        ProbeConfig.from_dict({"dropout": 1.0})


def test_shape_mismatch_is_named():
    train, (x_eval, y_eval, m_eval) = _synthetic()
    with pytest.raises(ValueError, match="m_eval"):
        _run(train, (x_eval, y_eval, m_eval[:, :2]))
    with pytest.raises(ValueError, match="x_train"):
        _run(train, (x_eval, y_eval, m_eval), layers=[0, 1])
