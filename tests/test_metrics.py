import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from vlprobe.metrics import (
    SCORE_SCHEMA,
    SUMMARY_SCHEMA,
    best_layers,
    binary_counts,
    binary_scores,
    bootstrap_weights,
    layer_scores,
    summarise,
    write_best_layers,
    write_summary,
)


def test_scores_match_sklearn_per_masked_task():
    rng = np.random.default_rng(0)
    n, n_layers, n_labels = 200, 3, 5
    y_true = (rng.random((n, n_labels)) < 0.3).astype(np.int8)
    y_pred = (rng.random((n, n_layers, n_labels)) < 0.4).astype(np.int8)
    mask = rng.random((n, n_labels)) < 0.6
    # zero-division cases: a label with no positives at all, predicted never at one layer
    y_true[:, 4] = 0
    y_pred[:, 0, 4] = 0

    scores = binary_scores(binary_counts(y_true[:, None, :], y_pred, mask[:, None, :]))

    for layer in range(n_layers):
        for label in range(n_labels):
            rows = mask[:, label]
            truth, predicted = y_true[rows, label], y_pred[rows, layer, label]
            precision, recall, f1, _ = precision_recall_fscore_support(
                truth, predicted, average="binary", zero_division=0
            )
            assert scores["precision"][layer, label] == pytest.approx(precision)
            assert scores["recall"][layer, label] == pytest.approx(recall)
            assert scores["f1"][layer, label] == pytest.approx(f1)
            assert scores["accuracy"][layer, label] == pytest.approx(
                accuracy_score(truth, predicted)
            )
            share_positive = predicted.mean()
            assert scores["majority_fraction"][layer, label] == pytest.approx(
                max(share_positive, 1 - share_positive)
            )
    assert scores["f1"][0, 4] == 0.0 and scores["precision"][0, 4] == 0.0


def test_mask_excludes_rows_and_empty_task_scores_zero():
    y_true = np.array([[1, 1], [0, 1], [1, 0]])
    y_pred = np.array([[1, 0], [1, 1], [0, 0]])
    mask = np.array([[True, False], [False, False], [True, False]])
    counts = binary_counts(y_true, y_pred, mask)
    assert counts.tp.tolist() == [1, 0]
    assert counts.fn.tolist() == [1, 0]
    assert counts.fp.tolist() == [0, 0]
    assert counts.n.tolist() == [2, 0]
    scores = binary_scores(counts)
    assert scores["recall"].tolist() == [0.5, 0.0]
    assert scores["accuracy"].tolist() == [0.5, 0.0]


def test_layer_scores_caption_per_layer_in_metric_order_without_spread_for_one_seed():
    truth = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    # layer 2: one false negative; layer 3: one false positive and one false negative
    layer_2 = np.array([1, 0, 0, 0, 1, 0, 1, 0])
    layer_3 = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    predictions = np.stack([layer_2, layer_3], axis=1)[None, :, :, None]
    scores = layer_scores(
        "caption", [2, 3], truth[:, None], np.ones((8, 1), bool), predictions, [True], n_boot=0
    )
    assert scores.schema == SCORE_SCHEMA
    rows = scores.filter(pl.col("metric") != "collapsed")
    assert rows["std"].is_null().all()  # one seed: no spread
    assert rows.select("layer", "metric", "value").rows() == [
        (2, "accuracy", 7 / 8),
        (2, "precision", 1.0),
        (2, "recall", 3 / 4),
        (2, "f1", pytest.approx(6 / 7)),
        (3, "accuracy", 6 / 8),
        (3, "precision", 3 / 4),
        (3, "recall", 3 / 4),
        (3, "f1", 3 / 4),
    ]


def test_layer_scores_object_macro_over_eligible_categories_mean_and_spread_over_seeds():
    truth = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    mask = np.ones_like(truth, bool)
    perfect = truth.copy()
    one_wrong = truth.copy()
    one_wrong[0, 0] = 0  # seed 1 misses one cat: its recall 1/2, f1 2/3
    predictions = np.stack([perfect, one_wrong])[:, :, None, :]  # [seeds, rows, 1 layer, labels]
    eligible = np.array([True, True, False])  # the third label enters no average
    scores = layer_scores("object", [0], truth, mask, predictions, eligible, n_boot=0)
    value = {r["metric"]: r for r in scores.iter_rows(named=True)}
    seed_macro_f1 = [1.0, (2 / 3 + 1.0) / 2]
    assert value["macro_f1"]["value"] == pytest.approx(np.mean(seed_macro_f1))
    assert value["macro_f1"]["std"] == pytest.approx(np.std(seed_macro_f1, ddof=1))
    assert value["macro_precision"]["value"] == 1.0
    assert value["macro_recall"]["value"] == pytest.approx(np.mean([1.0, 0.75]))
    assert value["n_categories"]["value"] == 2
    assert scores["metric"].to_list()[:4] == [
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "n_categories",
    ]
    # no eligible category: the documented zero, not null
    none = layer_scores("object", [0], truth, mask, predictions, np.zeros(3, bool), n_boot=0)
    value = {r["metric"]: r["value"] for r in none.iter_rows(named=True)}
    assert value["macro_f1"] == 0.0 and value["n_categories"] == 0
    with pytest.raises(ValueError, match="task_kind"):
        layer_scores("objects", [0], truth, mask, predictions, eligible, n_boot=0)


def test_balanced_majority_fraction_tells_rare_labels_from_collapse():
    truth = np.array([1] * 5 + [0] * 95)
    good = truth.copy()  # a perfect probe of a rare label predicts 95% negatives
    silent = np.zeros(100)  # a collapsed probe answers "no" to everything
    scores = binary_scores(binary_counts(truth[:, None], np.stack([good, silent], axis=1)))
    assert scores["majority_fraction"].tolist() == [0.95, 1.0]
    assert scores["balanced_majority_fraction"].tolist() == [0.5, 1.0]
    balanced = np.array([0, 1] * 50)
    half = binary_scores(binary_counts(balanced, np.ones(100)))
    assert half["balanced_majority_fraction"] == half["majority_fraction"] == 1.0


def test_bootstrap_weights_resample_with_replacement():
    weights = bootstrap_weights(50, 200, seed=0)
    assert weights.shape == (200, 50)
    assert (weights.sum(axis=1) == 50).all()
    assert (weights == 0).any() and (weights > 1).any()
    assert np.array_equal(weights, bootstrap_weights(50, 200, seed=0))


def _noisy_predictions(n_rows, accuracy, n_layers=1, seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n_rows) < 0.5).astype(np.int8)
    right = rng.random((1, n_rows, n_layers, 1)) < accuracy
    predictions = np.where(right, truth[None, :, None, None], 1 - truth[None, :, None, None])
    return truth[:, None], predictions


def _caption_scores(truth, predictions, **options):
    return layer_scores(
        "caption",
        list(range(predictions.shape[2])),
        truth,
        np.ones_like(truth, bool),
        predictions,
        np.ones(1, bool),
        **options,
    )


def _interval(scores, metric="accuracy", layer=0):
    row = scores.filter((pl.col("metric") == metric) & (pl.col("layer") == layer)).row(
        0, named=True
    )
    return row["ci_low"], row["value"], row["ci_high"]


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_samples():
    widths = []
    for n_rows in (200, 3200):
        truth, predictions = _noisy_predictions(n_rows, accuracy=0.8, n_layers=2)
        scores = _caption_scores(truth, predictions, n_boot=500, seed=1)
        for layer in (0, 1):
            for metric in ("accuracy", "precision", "recall", "f1"):
                low, value, high = _interval(scores, metric, layer)
                assert low <= value <= high
        low, value, high = _interval(scores)
        assert value == pytest.approx((predictions[0, :, 0, 0] == truth[:, 0]).mean())
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # ~1 / sqrt(n): 16x the rows, 1/4 the width
    # the binomial standard error for comparison: 95% width ~ 4 * sqrt(p (1 - p) / n)
    assert widths[0] == pytest.approx(4 * np.sqrt(0.8 * 0.2 / 200), rel=0.3)


def test_bootstrap_resamples_images_not_rows():
    truth, predictions = _noisy_predictions(100, accuracy=0.7)
    # every image has 8 identical rows: 800 rows but only 100 independent units
    truth, predictions = np.repeat(truth, 8, axis=0), np.repeat(predictions, 8, axis=1)
    images = np.repeat(np.arange(100) * 7 + 3, 8)
    by_image = _caption_scores(truth, predictions, n_boot=500, groups=images)
    by_row = _caption_scores(truth, predictions, n_boot=500)
    low_i, value, high_i = _interval(by_image)
    low_r, _, high_r = _interval(by_row)
    assert high_i - low_i > 2 * (high_r - low_r)  # sqrt(8) wider in truth
    assert low_i <= value <= high_i


def test_layer_scores_object_macro_control_selectivity_and_collapse():
    rng = np.random.default_rng(0)
    n_rows, n_labels = 400, 3
    truth = (rng.random((n_rows, n_labels)) < [0.3, 0.5, 0.2]).astype(np.int8)
    mask = rng.random((n_rows, n_labels)) < 0.8
    perfect = np.broadcast_to(truth[None, :, None, :], (2, n_rows, 1, n_labels))
    silent = np.zeros_like(perfect)  # layer 1: every probe answers "no"
    predictions = np.concatenate([perfect, silent], axis=2)
    control = np.stack([rng.permutation(truth) for _ in range(2)])
    control_predictions = rng.random(predictions.shape) < 0.5
    eligible = np.array([True, True, False])
    scores = layer_scores(
        "object",
        [10, 11],
        truth,
        mask,
        predictions,
        eligible,
        control_labels=control,
        control_predictions=control_predictions,
        n_boot=200,
    )
    value = {(r["layer"], r["metric"]): r for r in scores.iter_rows(named=True)}
    assert value[(10, "macro_f1")]["value"] == 1.0
    assert value[(10, "n_categories")]["value"] == 2
    assert value[(10, "collapsed")]["value"] == 0.0
    assert value[(11, "collapsed")]["value"] == 1.0
    assert value[(11, "macro_f1")]["value"] == 0.0
    control_f1 = value[(10, "control_macro_f1")]["value"]
    assert 0.2 < control_f1 < 0.6
    assert value[(10, "selectivity_macro_f1")]["value"] == pytest.approx(1 - control_f1)
    low, high = (
        value[(10, "selectivity_macro_f1")]["ci_low"],
        value[(10, "selectivity_macro_f1")]["ci_high"],
    )
    assert low <= 1 - control_f1 <= high
    assert value[(10, "macro_f1")]["std"] == 0.0  # both seeds identical
    assert value[(10, "control_macro_f1")]["std"] > 0


def _score_table(model, task, prompt, values, collapsed=()):
    headline = "accuracy" if task == "caption" else "macro_f1"
    rows = []
    for layer, value in enumerate(values):
        # (metric, value, std, ci_low, ci_high) of this layer's score and of its collapse flag
        for scored in (
            (headline, value, 0.01, value - 0.05, value + 0.05),
            ("collapsed", float(layer in collapsed), None, None, None),
        ):
            rows.append((model, task, prompt, "mean", "logreg", layer, *scored, 3))
    columns = [
        "model",
        "task",
        "prompt",
        "pooling",
        "probe",
        "layer",
        "metric",
        "value",
        "std",
        "ci_low",
        "ci_high",
        "n_seeds",
    ]
    return pl.DataFrame(rows, schema=columns, orient="row").with_columns(
        pl.col("layer").cast(pl.Int16)
    )


def test_summary_from_score_tables_and_best_layers():
    scores = _score_table("deep", "caption", "tao", [0.5, 0.6, 0.8, 0.78, 0.7], collapsed=(0,))
    shallow = _score_table("shallow", "object", "nocat", [0.2, 0.5, 0.4])
    summary = summarise([scores, shallow])
    assert summary.schema == SUMMARY_SCHEMA
    flagged = (
        summary.filter(pl.col("model") == "deep").group_by("layer").agg(pl.col("collapsed").all())
    )
    assert dict(flagged.iter_rows()) == {0: True, 1: False, 2: False, 3: False, 4: False}

    best = best_layers(summary)
    rows = {r["model"]: r for r in best.iter_rows(named=True)}
    assert rows["deep"]["layer"] == 2 and rows["deep"]["value"] == 0.8
    assert rows["deep"]["relative_depth"] == pytest.approx(0.5)
    assert rows["deep"]["ci_low"] == pytest.approx(0.75)
    assert rows["deep"]["near_best_layers"] == [2, 3]  # 0.78 lies within [0.75, 0.85]
    assert rows["deep"]["n_layers"] == 5
    assert rows["shallow"]["metric"] == "macro_f1" and rows["shallow"]["layer"] == 1
    assert rows["shallow"]["near_best_layers"] == [1]


def test_summary_and_best_layers_files(tmp_path):
    scores = _score_table("deep", "caption", "tao", [0.5, 0.9, 0.7])
    scores.write_parquet(tmp_path / "scores.parquet")
    summary = write_summary([tmp_path / "scores.parquet"], tmp_path / "summary.parquet")
    assert pl.read_parquet(tmp_path / "summary.parquet").equals(summary)
    best = write_best_layers(tmp_path / "summary.parquet", tmp_path / "best.parquet")
    assert pl.read_parquet(tmp_path / "best.parquet").equals(best)
    assert best["layer"].to_list() == [1]
