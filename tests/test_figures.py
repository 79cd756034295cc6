import json

import polars as pl
import pytest
from PIL import Image

from vlprobe import figures
from vlprobe.figures import (
    baselines_chart,
    caption_accuracy_chart,
    caption_scores_heatmap,
    category_f1_heatmap,
    figure_frame,
    loss_curves_chart,
    object_f1_chart,
    object_prompts_chart,
    save_chart,
    selectivity_chart,
)
from vlprobe.settings import FIGURES, Figure


def _summary(models=("tiny-qwen", "tiny-llava"), poolings=("last", "mean"), probes=("linear",)):
    """A tidy summary frame; models differ in depth, as real ones do."""
    scores = [  # (task, prompt, metric, value at layer 0, slope per layer)
        ("caption", "tao", "accuracy", 0.5, 0.05),
        ("caption", "compact", "accuracy", 0.55, 0.04),
        ("object", "nocat", "macro_f1", 0.1, 0.1),
        ("object", "withcat", "macro_f1", 0.2, 0.08),
        ("object", "nocat", "n_categories", 80.0, 0.0),
        ("caption", "tao", "selectivity_accuracy", 0.0, 0.04),
        ("object", "nocat", "selectivity_macro_f1", 0.05, 0.05),
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
        std=pl.lit(0.01),
        collapsed=pl.col("layer") == 0,
    )


def _probe_tables(models=("tiny-qwen", "tiny-llava"), seeds=(0, 1)):
    """Object-task probe tables: F1 rises with depth, faster for common categories."""
    rows = [
        dict(
            model=model,
            task="object",
            prompt=prompt,
            pooling="mean",
            probe="linear",
            layer=layer,
            label=label,
            seed=seed,
            n_train_pos=0 if label == "zebra" else 5,
            n_eval_pos=3,
            f1=min(1.0, 0.1 * layer * rank + 0.01 * seed),
        )
        for depth, model in enumerate(models, start=3)
        for prompt in ("nocat", "withcat")
        for layer in range(depth + 1)
        for rank, label in enumerate(("person", "dog", "kite", "zebra"), start=1)
        for seed in seeds
    ]
    return pl.DataFrame(rows).with_columns(pl.col("layer").cast(pl.Int16))


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


def _data(chart):
    spec = chart.to_dict()
    return spec, [row for rows in spec["datasets"].values() for row in rows]


def test_intervals_become_bands_and_collapsed_layers_are_marked():
    spec, _ = _data(caption_accuracy_chart(_summary()))
    layers = spec["spec"]["layer"]
    marks = [
        layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
        for layer in layers
    ]
    assert marks[0] == "area"  # the band, under the lines
    band = layers[0]["encoding"]
    assert band["y"]["field"] == "ci_low" and band["y2"]["field"] == "ci_high"
    crosses = [
        layer
        for layer in layers
        if isinstance(layer["mark"], dict) and layer["mark"].get("shape") == "cross"
    ]
    assert len(crosses) == 1 and "collapsed" in json.dumps(crosses[0]["transform"])
    # no collapsed layer: no cross layer
    spec, _ = _data(caption_accuracy_chart(_summary().with_columns(collapsed=pl.lit(False))))
    assert not any(
        isinstance(layer["mark"], dict) and layer["mark"].get("shape") == "cross"
        for layer in spec["spec"]["layer"]
    )


def test_relative_depth_axis_puts_models_of_any_depth_on_zero_to_one():
    spec, values = _data(object_f1_chart(_summary(), x_axis="relative_depth"))
    depth = {}
    for row in values:
        depth.setdefault(row["model"], []).append(row["relative_depth"])
    assert {model: (min(d), max(d)) for model, d in depth.items()} == {
        "tiny-qwen": (0.0, 1.0),
        "tiny-llava": (0.0, 1.0),
    }
    assert spec["spec"]["layer"][1]["encoding"]["x"]["field"] == "relative_depth"
    assert spec["resolve"]["scale"]["x"] == "shared"
    with pytest.raises(ValueError, match="x_axis"):
        caption_accuracy_chart(_summary(), x_axis="depth")


def test_selectivity_chart_has_a_panel_per_task_and_a_zero_rule(tmp_path):
    chart = selectivity_chart(_summary())
    spec, values = _data(chart)
    assert len(spec["hconcat"]) == 2
    assert {row["metric"] for row in values} == {"selectivity_accuracy", "selectivity_macro_f1"}
    assert '"datum": 0.0' in json.dumps(spec)
    save_chart(chart, tmp_path / "s.html", tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as image:
        image.verify()
    only_caption = _summary().filter(pl.col("metric") != "selectivity_macro_f1")
    assert len(selectivity_chart(only_caption).to_dict()["hconcat"]) == 1
    with pytest.raises(ValueError, match="control tasks"):
        selectivity_chart(_summary().filter(~pl.col("metric").str.starts_with("selectivity")))


def test_category_heatmap_from_probe_tables(tmp_path):
    chart = category_f1_heatmap(_probe_tables())
    spec, values = _data(chart)
    assert {row["label"] for row in values} == {"person", "dog", "kite"}  # zebra: no train positive
    cell = next(
        r
        for r in values
        if r["model"] == "tiny-qwen"
        and r["label"] == "kite"
        and r["layer"] == 1
        and r["prompt"] == "nocat"
    )
    assert cell["f1"] == pytest.approx(0.3 + 0.005)  # mean over two seeds
    assert len({row["panel"] for row in values}) == 4  # model x prompt
    encoding = spec["spec"]["encoding"]
    assert encoding["y"]["sort"][0] == "kite"  # best category first
    assert spec["spec"]["height"] >= 9 * 3
    save_chart(chart, tmp_path / "h.html", tmp_path / "h.png")
    with Image.open(tmp_path / "h.png") as image:
        image.verify()
    with pytest.raises(ValueError, match="no object-task rows"):
        category_f1_heatmap(_probe_tables().with_columns(task=pl.lit("caption")))


def test_registry_names_each_figure_and_its_input():
    assert set(FIGURES) == {
        "caption_accuracy",
        "object_f1",
        "object_prompts",
        "caption_scores",
        "loss_curves",
        "selectivity",
        "baselines",
        "category_f1",
    }
    assert all(isinstance(figure, Figure) for figure in FIGURES.values())
    assert {name for name, f in FIGURES.items() if f.input == "probes"} == {
        "category_f1",
        "loss_curves",
    }
    chart = FIGURES["object_f1"](_summary(), width=120, height=90)  # callable like its function
    assert chart.to_dict()["spec"]["width"] == 120
    assert all(callable(getattr(figures, figure.draw, None)) for figure in FIGURES.values())


def test_figure_frames_from_files(tmp_path):
    tables = _probe_tables()
    paths = []
    for i, (_, part) in enumerate(tables.group_by("model", "prompt", maintain_order=True)):
        paths.append(tmp_path / f"probe-{i}.parquet")
        part.write_parquet(paths[-1])
    frame = figure_frame(FIGURES["category_f1"], paths)
    assert frame.sort(frame.columns).equals(tables.sort(tables.columns))
    _summary().write_parquet(tmp_path / "summary.parquet")
    assert figure_frame(FIGURES["object_f1"], [tmp_path / "summary.parquet"]).height > 0
    with pytest.raises(ValueError, match="one summary file"):
        figure_frame(FIGURES["object_f1"], paths)


def _values(chart) -> list[dict]:
    return [row for rows in chart.to_dict()["datasets"].values() for row in rows]


def test_prompt_variant_panels_and_score_heatmap(tmp_path):
    summary = pl.concat(
        [
            _summary(),
            _summary().filter(pl.col("metric") == "accuracy").with_columns(metric=pl.lit("f1")),
            _summary()
            .filter(pl.col("metric") == "accuracy")
            .with_columns(metric=pl.lit("precision"), value=pl.col("value") - 0.1),
        ]
    )
    spec = object_prompts_chart(summary).to_dict()
    assert spec["facet"]["field"] == "prompt"
    assert {row["prompt"] for row in _values(object_prompts_chart(summary))} == {"nocat", "withcat"}

    heatmap = caption_scores_heatmap(summary)
    assert {row["metric"] for row in _values(heatmap)} == {"precision", "f1"}
    assert heatmap.to_dict()["facet"]["column"]["field"] == "metric"
    save_chart(heatmap, tmp_path / "h.html", tmp_path / "h.png", tmp_path / "h.svg")
    assert (tmp_path / "h.svg").read_text().lstrip().startswith("<svg")
    with pytest.raises(ValueError, match="caption rows with metric"):
        caption_scores_heatmap(summary.filter(pl.col("task") == "object"))


def test_loss_curves_show_the_best_and_the_worst_layer():
    rows = [
        dict(
            model="m",
            task="caption",
            prompt="tao",
            pooling="mean",
            probe="linear",
            layer=layer,
            label="entailment",
            seed=seed,
            accuracy=0.5 + 0.1 * layer,
            train_loss=[0.7, 0.6 - 0.01 * layer, 0.5],
            val_loss=[0.7, 0.65],
        )
        for layer in range(4)
        for seed in (0, 1)
    ]
    chart = loss_curves_chart(pl.DataFrame(rows).with_columns(pl.col("layer").cast(pl.Int16)))
    values = _values(chart)
    assert {(row["role"], row["layer"]) for row in values} == {("best", 3), ("worst", 0)}
    best_train = [r["loss"] for r in values if r["role"] == "best" and r["split"] == "train_loss"]
    assert best_train == [0.7, pytest.approx(0.57), 0.5]  # epochs in order, first seed only
    assert max(r["epoch"] for r in values if r["split"] == "val_loss") == 2


def test_baselines_sit_beside_their_model():
    base = _summary(models=("tiny-qwen",), poolings=("mean",))
    summary = pl.concat(
        [
            base,
            base.with_columns(model=pl.lit("tiny-qwen@random_init"), value=pl.lit(0.5)),
            base.filter(pl.col("layer") == 0).with_columns(
                model=pl.lit("captions@text_embedding"), pooling=pl.lit("sentence"), value=0.62
            ),
        ]
    )
    chart = baselines_chart(summary)
    text = json.dumps(chart.to_dict())
    assert '"datum": 0.62' in text  # the caption-only floor as a rule
    values = _values(chart)
    assert {row["input"] for row in values} == {"model", "random_init"}
    assert {row["model"] for row in values} == {"tiny-qwen"}
    with pytest.raises(ValueError, match="no baselines"):
        baselines_chart(base)
