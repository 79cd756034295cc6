import json

import polars as pl
import pytest
from PIL import Image

from vlprobe.figures import caption_accuracy_chart, object_f1_chart, save_chart


def _summary(models=("tiny-qwen", "tiny-llava"), poolings=("last", "mean"), probes=("linear",)):
    """A tidy summary frame; models differ in depth, as real ones do."""
    scores = [  # (task, prompt, metric, value at layer 0, slope per layer)
        ("caption", "tao", "accuracy", 0.5, 0.05),
        ("caption", "compact", "accuracy", 0.55, 0.04),
        ("object", "nocat", "macro_f1", 0.1, 0.1),
        ("object", "withcat", "macro_f1", 0.2, 0.08),
        ("object", "nocat", "n_categories", 80.0, 0.0),
    ]
    rows = [
        dict(
            model=model,
            pooling=pooling,
            probe=probe,
            layer=layer,
            task=task,
            prompt=prompt,
            metric=metric,
            value=start + slope * layer,
        )
        for depth, model in enumerate(models, start=3)
        for pooling in poolings
        for probe in probes
        for layer in range(depth + 1)
        for task, prompt, metric, start, slope in scores
    ]
    return pl.DataFrame(rows).with_columns(
        pl.col("layer").cast(pl.Int16),
        ci_low=pl.col("value") - 0.02,
        ci_high=pl.col("value") + 0.02,
    )


def test_charts_save_offline_html_and_valid_png(tmp_path):
    summary = _summary()
    for name, chart in (
        ("caption", caption_accuracy_chart(summary)),
        ("object", object_f1_chart(summary)),
    ):
        html, png = tmp_path / "figures" / f"{name}.html", tmp_path / "figures" / f"{name}.png"
        save_chart(chart, html, png)
        text = html.read_text()
        assert "vegaEmbed" in text
        assert '<script src="http' not in text  # Vega is inlined, no CDN needed
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG"
            assert image.size[0] > 300 and image.size[1] > 200
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "caption.html",
        "caption.png",
        "object.html",
        "object.png",
    ]


def test_charts_use_integer_layer_axis_and_select_their_rows():
    summary = _summary()
    spec = caption_accuracy_chart(summary).to_dict()
    text = json.dumps(spec)
    assert '"format": "d"' in text and '"tickMinStep": 1' in text
    values = next(iter(spec["datasets"].values()))
    assert {row["metric"] for row in values} == {"accuracy"}
    assert {row["task"] for row in values} == {"caption"}
    assert spec["facet"]["column"]["field"] == "pooling"

    spec = object_f1_chart(summary).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert {row["metric"] for row in values} == {"macro_f1"}
    assert {row["prompt"] for row in values} == {"nocat", "withcat"}
    assert spec["facet"]["field"] == "model"


def test_charts_robust_to_single_model_pooling_and_no_intervals(tmp_path):
    summary = _summary(models=("only",), poolings=("last",)).drop("ci_low", "ci_high")
    save_chart(caption_accuracy_chart(summary), tmp_path / "c.html", tmp_path / "c.png")
    save_chart(object_f1_chart(summary), tmp_path / "o.html", tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as image:
        image.verify()


def test_several_probes_are_named_in_the_line_style():
    values = next(
        iter(
            caption_accuracy_chart(_summary(probes=("linear", "mlp")))
            .to_dict()["datasets"]
            .values()
        )
    )
    assert {row["variant"] for row in values} == {
        "tao / linear",
        "tao / mlp",
        "compact / linear",
        "compact / mlp",
    }


def test_missing_rows_or_columns_are_reported():
    summary = _summary()
    with pytest.raises(ValueError, match="no caption rows"):
        caption_accuracy_chart(summary.filter(pl.col("task") == "object"))
    with pytest.raises(ValueError, match="probe"):
        object_f1_chart(summary.drop("probe"))
