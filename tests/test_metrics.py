import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from vlprobe.metrics import binary_counts, binary_scores, layer_summary


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


def _probe_rows(layer, label, seed, n_train_pos, n_eval_pos, f1, precision, recall, accuracy):
    return dict(
        layer=layer,
        label=label,
        seed=seed,
        n_train_pos=n_train_pos,
        n_eval_pos=n_eval_pos,
        f1=f1,
        precision=precision,
        recall=recall,
        accuracy=accuracy,
    )


def test_layer_summary_caption():
    table = pl.DataFrame(
        [
            _probe_rows(3, "entailment", 0, 10, 5, 0.6, 0.5, 0.75, 0.55),
            _probe_rows(2, "entailment", 0, 10, 5, 0.8, 0.7, 0.9, 0.85),
        ]
    ).with_columns(pl.col("layer").cast(pl.Int16))
    summary = layer_summary(table, "caption")
    assert summary.schema == pl.Schema(
        {"layer": pl.Int16, "metric": pl.String, "value": pl.Float64}
    )
    assert summary.rows() == [
        (2, "accuracy", 0.85),
        (2, "precision", 0.7),
        (2, "recall", 0.9),
        (2, "f1", 0.8),
        (3, "accuracy", 0.55),
        (3, "precision", 0.5),
        (3, "recall", 0.75),
        (3, "f1", 0.6),
    ]


def test_layer_summary_object_macro_over_eligible_categories_and_seeds():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        rows += [
            _probe_rows(0, "cat", seed, 5, 3, 0.4 + shift, 0.5, 0.3, 0.9),
            _probe_rows(0, "dog", seed, 7, 2, 0.8 + shift, 0.7, 0.9, 0.9),
            _probe_rows(0, "zebra", seed, 0, 4, 0.0, 0.0, 0.0, 0.99),  # no train positive
            _probe_rows(0, "kite", seed, 3, 0, 0.0, 0.0, 0.0, 0.99),  # no eval positive
            _probe_rows(1, "zebra", seed, 0, 4, 0.0, 0.0, 0.0, 0.99),
        ]
    summary = layer_summary(pl.DataFrame(rows), "object")
    values = {(layer, metric): value for layer, metric, value in summary.rows()}
    assert values[(0, "macro_f1")] == pytest.approx(0.65)  # mean over seeds of (0.4, 0.8) + shift
    assert values[(0, "macro_precision")] == pytest.approx(0.6)
    assert values[(0, "macro_recall")] == pytest.approx(0.6)
    assert values[(0, "n_categories")] == 2
    # a layer without any eligible category: documented zero, not null
    assert values[(1, "macro_f1")] == 0.0
    assert values[(1, "n_categories")] == 0
    assert summary["metric"].to_list()[:4] == [
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "n_categories",
    ]


def test_layer_summary_rejects_bad_input():
    two_labels = pl.DataFrame(
        [_probe_rows(0, "a", 0, 1, 1, 0, 0, 0, 0), _probe_rows(0, "b", 0, 1, 1, 0, 0, 0, 0)]
    )
    with pytest.raises(ValueError, match="one label"):
        layer_summary(two_labels, "caption")
    with pytest.raises(ValueError, match="task_kind"):
        layer_summary(two_labels, "objects")
