"""Figures: layer-by-layer probe scores as Altair charts, saved as offline HTML and PNG.

Most charts read the tidy summary frame (model, task, pooling, prompt, probe, layer, metric,
value, optionally std, ci_low, ci_high and collapsed); the per-category heatmap reads the
concatenated probe tables. Every figure function takes the frame, ``width`` and ``height`` (of
one panel) and ``x_axis``: ``"layer"`` (hidden-state index, 0 = input embeddings) or
``"relative_depth"`` (layer over the model's deepest probed layer, so that models of different
depth share one axis from 0 to 1). Where the rows carry an interval, a band is drawn around
each curve; layers flagged ``collapsed`` are marked with a red cross.

:data:`vlprobe.settings.FIGURES` registers the figures: name -> :class:`~vlprobe.settings.Figure`
(``draw``, the name of its function here, and ``input``, ``"summary"`` for
``results/metrics/summary.parquet`` or ``"probes"`` for the concatenated probe tables
``results/probes/**/*.parquet``). A ``Figure`` is callable like its function:
``FIGURES[name](frame, **style)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import altair as alt
import polars as pl

from vlprobe.baselines import TEXT_EMBEDDING_MODEL, split_model_name
from vlprobe.metrics import HEADLINE_METRIC
from vlprobe.settings import Figure
from vlprobe.storage import atomic_path

SUMMARY_COLUMNS = ("model", "task", "pooling", "prompt", "probe", "layer", "metric", "value")
OPTIONAL_COLUMNS = ("std", "ci_low", "ci_high", "collapsed")
LAYER_AXIS = alt.Axis(format="d", tickMinStep=1)
DEPTH_AXIS = alt.Axis(format=".1f")
TOOLTIP_FIELDS = ("model:N", "pooling:N", "prompt:N", "probe:N", "layer:Q")
XAxis = Literal["layer", "relative_depth"]
SELECTIVITY_METRICS = {task: f"selectivity_{m}" for task, m in HEADLINE_METRIC.items()}
TASK_TITLES = {"caption": "caption entailment", "object": "object recognition"}
TEXT_EMBEDDING_BASE = split_model_name(TEXT_EMBEDDING_MODEL)[0]


def _with_depth(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``relative_depth``: layer over the deepest layer of the same model in ``frame``."""
    deepest = pl.col("layer").max().over("model").cast(pl.Float64)
    return frame.with_columns(
        (pl.col("layer").cast(pl.Float64) / pl.max_horizontal(deepest, pl.lit(1.0))).alias(
            "relative_depth"
        )
    )


def _x(x_axis: XAxis) -> alt.X:
    if x_axis == "layer":
        return alt.X("layer:Q", axis=LAYER_AXIS, title="layer (hidden-state index)")
    if x_axis == "relative_depth":
        return alt.X(
            "relative_depth:Q",
            axis=DEPTH_AXIS,
            title="relative depth (layer / number of layers)",
            scale=alt.Scale(domain=[0, 1]),
        )
    raise ValueError(f"x_axis must be 'layer' or 'relative_depth', got {x_axis!r}")


def _rows(summary: pl.DataFrame, task: str, metrics: str | tuple[str, ...]) -> pl.DataFrame:
    """The rows of one task and metric(s), with relative depth; optional columns kept."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ValueError(f"summary frame lacks columns {missing}")
    wanted = (metrics,) if isinstance(metrics, str) else metrics
    rows = _with_depth(summary).filter(
        (pl.col("task") == task) & pl.col("metric").is_in(list(wanted))
    )
    if rows.is_empty():
        raise ValueError(f"summary frame has no {task} rows with metric {' or '.join(wanted)!r}")
    optional = [column for column in OPTIONAL_COLUMNS if column in rows.columns]
    if {"ci_low", "ci_high"} - set(optional):  # a band needs both ends
        optional = [column for column in optional if column not in ("ci_low", "ci_high")]
    if "collapsed" not in optional:
        rows, optional = rows.with_columns(collapsed=pl.lit(False)), [*optional, "collapsed"]
    return rows.select(*SUMMARY_COLUMNS, "relative_depth", *optional)


def _title(text: str, rows: pl.DataFrame) -> alt.TitleParams:
    """A chart title; a subtitle explains the red crosses when a layer is marked."""
    if "collapsed" in rows.columns and rows["collapsed"].any():
        note = "red cross: collapsed layer (its probes predict almost only one class)"
        return alt.TitleParams(text, subtitle=note, anchor="start")
    return alt.TitleParams(text, anchor="start")


def _with_variant(rows: pl.DataFrame, first: str) -> tuple[pl.DataFrame, str]:
    """Add ``variant`` = ``first``, joined with the probe name only when several probes appear."""
    if rows["probe"].n_unique() == 1:
        return rows.with_columns(pl.col(first).alias("variant")), first
    variant = pl.concat_str(pl.col(first), pl.lit(" / "), pl.col("probe")).alias("variant")
    return rows.with_columns(variant), f"{first} / probe"


def _lines(
    rows: pl.DataFrame,
    y_title: str,
    color: str,
    dash_title: str,
    reference: float | None,
    width: int,
    height: int,
    x_axis: XAxis = "layer",
    y_domain: list[float] | None = None,
) -> alt.LayerChart:
    """Lines coloured by ``color`` and dashed by ``variant``, with points, not yet faceted.

    A confidence band is drawn when the rows carry one; a dotted rule marks ``reference``
    (chance, or zero selectivity); collapsed layers get a red cross.
    """
    x = _x(x_axis)
    scale = alt.Scale(domain=y_domain) if y_domain else alt.Undefined
    y = alt.Y("value:Q", title=y_title, scale=scale)
    # opaque legend symbols, though the band layer shares the colour scale at low opacity
    colour = alt.Color(f"{color}:N", title=color, legend=alt.Legend(symbolOpacity=1))
    lines = (
        alt.Chart()
        .mark_line()
        .encode(x=x, y=y, color=colour, strokeDash=alt.StrokeDash("variant:N", title=dash_title))
    )
    tooltip = [*TOOLTIP_FIELDS, alt.Tooltip("value:Q", format=".3f")]
    has_band = "ci_low" in rows.columns and rows["ci_low"].is_not_null().any()
    if has_band:
        tooltip += [alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")]
    if "std" in rows.columns:
        tooltip.append(alt.Tooltip("std:Q", format=".3f", title="std over seeds"))
    tooltip.append(alt.Tooltip("collapsed:N"))
    points = (
        alt.Chart().mark_point(filled=True, size=30).encode(x=x, y=y, color=colour, tooltip=tooltip)
    )
    layers: list[alt.Chart] = []
    if has_band:
        band = (
            alt.Chart()
            .mark_area(opacity=0.15)
            .encode(x=x, y="ci_low:Q", y2="ci_high:Q", color=colour, detail="variant:N")
        )
        layers.append(band)
    if reference is not None:
        layers.append(
            alt.Chart().mark_rule(color="gray", strokeDash=[2, 2]).encode(y=alt.datum(reference))
        )
    layers += [lines, points]
    if rows["collapsed"].any():
        collapsed = (
            alt.Chart()
            .transform_filter(alt.datum.collapsed)
            .mark_point(shape="cross", color="red", size=90, strokeWidth=2, filled=True)
            .encode(x=x, y=y, tooltip=tooltip)
        )
        layers.append(collapsed)
    return alt.layer(*layers, data=rows).properties(width=width, height=height)


def _object_f1_panels(
    summary: pl.DataFrame,
    color: str,
    panel: str,
    title: str,
    width: int,
    height: int,
    x_axis: XAxis,
) -> alt.FacetChart:
    """Object macro-F1 per layer, coloured by ``color``, one panel per ``panel`` value, dashed
    by pooling (and probe); panels keep their own layer axis unless on relative depth."""
    rows, variant_title = _with_variant(_rows(summary, "object", "macro_f1"), "pooling")
    chart = _lines(
        rows,
        y_title="macro-F1",
        color=color,
        dash_title=variant_title,
        reference=None,
        width=width,
        height=height,
        x_axis=x_axis,
        y_domain=[0, 1],
    )
    n_panels = rows[panel].n_unique()
    panel_title = "prompt variant" if panel == "prompt" else panel
    return (
        chart.facet(facet=alt.Facet(f"{panel}:N", title=panel_title), columns=min(n_panels, 3))
        .resolve_scale(x="independent" if x_axis == "layer" else "shared")
        .properties(title=_title(title, rows))
    )


def caption_accuracy_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Caption-entailment accuracy per layer: one colour per model, one panel per pooling.

    Prompt variants (and probes, if several) are told apart by dash; the dotted rule marks
    chance (0.5: the task is balanced by construction).
    """
    rows, variant_title = _with_variant(_rows(summary, "caption", "accuracy"), "prompt")
    chart = _lines(
        rows,
        y_title="accuracy",
        color="model",
        dash_title=variant_title,
        reference=0.5,
        width=width,
        height=height,
        x_axis=x_axis,
        y_domain=[0, 1],
    )
    return chart.facet(column=alt.Column("pooling:N", title="pooling")).properties(
        title=_title("Caption entailment (global semantics)", rows)
    )


def object_f1_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Object-recognition macro-F1 per layer: one panel per model, one colour per prompt.

    Prompt variants (e.g. nocat, withcat) are colours; poolings (and probes, if several) are
    dashes. Each model keeps its own layer axis, since models differ in depth (with
    ``x_axis="relative_depth"`` all share 0..1).
    """
    return _object_f1_panels(
        summary, "prompt", "model", "Object recognition (local semantics)", width, height, x_axis
    )


def selectivity_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.HConcatChart:
    """Selectivity (probe score minus control-task score) per layer, one panel per task.

    Caption: ``selectivity_accuracy``; object: ``selectivity_macro_f1``. Colour = model, dash
    = prompt / pooling (/ probe); the dotted rule marks zero (the probe does no better than on
    shuffled labels). Needs summaries made with control probes.
    """
    panels = []
    for task, metric in SELECTIVITY_METRICS.items():
        if summary.filter((pl.col("task") == task) & (pl.col("metric") == metric)).is_empty():
            continue
        rows = _rows(summary, task, metric).with_columns(
            pl.concat_str(pl.col("prompt"), pl.lit(" / "), pl.col("pooling")).alias("setting")
        )
        rows, dash_title = _with_variant(rows, "setting")
        chart = _lines(
            rows,
            y_title=f"{metric.removeprefix('selectivity_').replace('_', '-')} - control",
            color="model",
            dash_title=dash_title.replace("setting", "prompt / pooling"),
            reference=0.0,
            width=width,
            height=height,
            x_axis=x_axis,
        )
        panels.append(chart.properties(title=_title(f"Selectivity: {TASK_TITLES[task]}", rows)))
    if not panels:
        raise ValueError(
            f"summary frame has no selectivity rows ({sorted(SELECTIVITY_METRICS.values())}); "
            "were the probes run with control tasks?"
        )
    return alt.hconcat(*panels).resolve_scale(color="shared", strokeDash="independent")


def category_f1_heatmap(
    probe_tables: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Per-category F1 of the object task: layers x categories, one panel per setting.

    Reads the concatenated probe tables (one row per layer, label and seed, with the key
    columns); keeps the object task's categories with a positive in both the training and
    the evaluation rows, averages F1 over seeds, and orders the categories by their best F1
    (most decodable on top). A panel per model / prompt / pooling (/ probe); each panel is at
    least ``height`` tall and 9 pixels per category.
    """
    needed = ("model", "task", "prompt", "pooling", "probe", "layer", "label", "f1")
    missing = [c for c in (*needed, "n_train_pos", "n_eval_pos") if c not in probe_tables.columns]
    if missing:
        raise ValueError(f"probe tables lack columns {missing}")
    rows = probe_tables.filter(
        (pl.col("task") == "object") & (pl.col("n_train_pos") > 0) & (pl.col("n_eval_pos") > 0)
    )
    if rows.is_empty():
        raise ValueError("probe tables have no object-task rows with eligible categories")
    keys = ["model", "prompt", "pooling", "probe"]
    cells = _with_depth(
        rows.group_by(*keys, "layer", "label").agg(
            pl.col("f1").mean().alias("f1"), pl.col("f1").std().alias("std")
        )
    )
    several_probes = cells["probe"].n_unique() > 1
    panel = [pl.col("model"), pl.lit(" / "), pl.col("prompt"), pl.lit(" / "), pl.col("pooling")]
    if several_probes:
        panel += [pl.lit(" / "), pl.col("probe")]
    cells = cells.with_columns(
        pl.concat_str(panel).alias("panel"),
        pl.col("relative_depth").round(2).alias("depth"),
    )
    order = (
        cells.group_by("label")
        .agg(pl.col("f1").max().alias("best"))
        .sort("best", "label", descending=[True, False])["label"]
        .to_list()
    )
    x_field = "layer:O" if x_axis == "layer" else "depth:O"
    x_title = "layer (hidden-state index)" if x_axis == "layer" else "relative depth"
    _x(x_axis)  # validates x_axis
    panel_height = max(height, 9 * len(order))
    chart = (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X(x_field, title=x_title),
            y=alt.Y("label:N", sort=order, title="category"),
            color=alt.Color("f1:Q", title="F1", scale=alt.Scale(domain=[0, 1], scheme="viridis")),
            tooltip=[
                "panel:N",
                "label:N",
                "layer:Q",
                alt.Tooltip("f1:Q", format=".3f"),
                alt.Tooltip("std:Q", format=".3f", title="std over seeds"),
            ],
        )
        .properties(width=width, height=panel_height)
    )
    n_panels = cells["panel"].n_unique()
    return (
        chart.facet(facet=alt.Facet("panel:N", title=None), columns=min(n_panels, 2))
        .resolve_scale(x="independent")
        .properties(title="Object recognition: F1 per category and layer")
    )


def object_prompts_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Object-recognition macro-F1 per layer, one panel per prompt variant, one colour per model.

    Tao et al. 2024, Figure 3: how much the layer curve depends on the wording of the prompt.
    Poolings (and probes, if several) are dashes.
    """
    return _object_f1_panels(
        summary, "model", "prompt", "Object recognition per prompt variant", width, height, x_axis
    )


def caption_scores_heatmap(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Caption-entailment precision, recall and F1 over layers (x) and models (y).

    The compact-model study's Figure 2. One column per metric, one row per prompt / pooling
    (/ probe); each cell is the seed mean on the evaluation split.
    """
    rows = _rows(summary, "caption", ("precision", "recall", "f1"))
    rows, variant_title = _with_variant(
        rows.with_columns(
            pl.concat_str(pl.col("prompt"), pl.lit(" / "), pl.col("pooling")).alias("setting"),
            pl.col("relative_depth").round(2).alias("depth"),
        ),
        "setting",
    )
    _x(x_axis)  # validates x_axis
    x_field, x_title = (
        ("layer:O", "layer (hidden-state index)")
        if x_axis == "layer"
        else ("depth:O", "relative depth")
    )
    chart = (
        alt.Chart(rows)
        .mark_rect()
        .encode(
            x=alt.X(x_field, title=x_title),
            y=alt.Y("model:N", title="model"),
            color=alt.Color("value:Q", title="score", scale=alt.Scale(domain=[0, 1])),
            tooltip=[*TOOLTIP_FIELDS, "metric:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=width, height=max(height // 2, 24 * rows["model"].n_unique()))
    )
    return chart.facet(
        column=alt.Column("metric:N", title=None, sort=["precision", "recall", "f1"]),
        row=alt.Row("variant:N", title=variant_title.replace("setting", "prompt / pooling")),
    ).properties(title=_title("Caption entailment: precision, recall, F1 per layer", rows))


def loss_curves_chart(
    probe_tables: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.FacetChart:
    """Training and validation loss per epoch of the best and the worst layer's caption probe.

    The compact-model study's Figures 3-4. Reads the concatenated probe tables; per model /
    prompt / pooling / probe, the layers with the highest and the lowest evaluation accuracy
    (seed mean) are drawn, with the loss curves of their first seed. ``x_axis`` is accepted
    for a uniform interface; the x axis here is the epoch.
    """
    needed = ("model", "task", "prompt", "pooling", "probe", "layer", "seed", "accuracy")
    missing = [c for c in (*needed, "train_loss", "val_loss") if c not in probe_tables.columns]
    if missing:
        raise ValueError(f"probe tables lack columns {missing}")
    _x(x_axis)
    keys = ["model", "prompt", "pooling", "probe"]
    rows = probe_tables.filter(pl.col("task") == "caption")
    if rows.is_empty():
        raise ValueError("probe tables have no caption-task rows")
    mean_accuracy = rows.group_by(*keys, "layer").agg(pl.col("accuracy").mean())
    ranked = mean_accuracy.sort("accuracy", "layer", descending=[True, False])
    best = ranked.group_by(keys, maintain_order=True).first().with_columns(role=pl.lit("best"))
    worst = ranked.group_by(keys, maintain_order=True).last().with_columns(role=pl.lit("worst"))
    chosen = pl.concat([best, worst]).select(*keys, "layer", "role")
    first_seed = rows.filter(pl.col("seed") == pl.col("seed").min().over(keys))
    curves = (
        first_seed.join(chosen, on=[*keys, "layer"])
        .unpivot(
            index=[*keys, "layer", "role"],
            on=["train_loss", "val_loss"],
            variable_name="split",
            value_name="loss",
        )
        .explode("loss")
        .with_columns(
            pl.int_range(1, pl.len() + 1).over(*keys, "role", "split").alias("epoch"),
            pl.concat_str(pl.col("role"), pl.lit(" (layer "), pl.col("layer"), pl.lit(")")).alias(
                "curve"
            ),
            pl.concat_str(*(pl.col(k) for k in keys), separator=" / ").alias("panel"),
        )
        .drop_nulls("loss")
        .filter(pl.col("loss").is_finite())
    )
    if curves.is_empty():
        raise ValueError("the caption probe tables hold no loss curves")
    chart = (
        alt.Chart(curves)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=LAYER_AXIS, title="epoch"),
            y=alt.Y("loss:Q", title="cross-entropy", scale=alt.Scale(zero=False)),
            color=alt.Color("role:N", title="layer", sort=["best", "worst"]),
            strokeDash=alt.StrokeDash("split:N", title="loss"),
            detail="curve:N",
            tooltip=[
                "panel:N",
                "curve:N",
                "split:N",
                "epoch:Q",
                alt.Tooltip("loss:Q", format=".4f"),
            ],
        )
        .properties(width=width, height=height)
    )
    return chart.facet(
        facet=alt.Facet("panel:N", title="model / prompt / pooling / probe"),
        columns=min(curves["panel"].n_unique(), 3),
    ).properties(title=alt.TitleParams("Caption probe loss: best and worst layer", anchor="start"))


def baselines_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200, x_axis: XAxis = "layer"
) -> alt.HConcatChart:
    """Each model beside its baselines, per task: one panel per model.

    Colours: the model, ``random_init`` (same architecture, fresh weights) and ``blank_image``
    (grey images); dashes: prompt / pooling. In caption panels a dashed black rule marks the
    probe on the sentence embedding of the caption alone (the text-embedding baseline), the
    floor a layer must beat to show it uses the image. Needs a summary with baselines.
    """
    panels = []
    for task, metric in HEADLINE_METRIC.items():
        if summary.filter((pl.col("task") == task) & (pl.col("metric") == metric)).is_empty():
            continue
        rows = _rows(summary, task, metric)
        named = rows.with_columns(
            pl.col("model").str.split("@").list.first().alias("base"),
            pl.col("model")
            .str.split("@")
            .list.get(1, null_on_oob=True)
            .fill_null("model")
            .alias("input"),
        )
        text = named.filter(pl.col("base") == TEXT_EMBEDDING_BASE)
        curves = named.filter(pl.col("base") != TEXT_EMBEDDING_BASE)
        if curves["input"].n_unique() < 2 and text.is_empty():
            continue
        # a baseline has its model's depth, so relative_depth from _rows stays right
        curves = curves.with_columns(
            pl.col("base").alias("model"),
            pl.concat_str(pl.col("prompt"), pl.lit(" / "), pl.col("pooling")).alias("setting"),
        )
        curves, dash_title = _with_variant(curves, "setting")
        chart = _lines(
            curves,
            y_title=metric.replace("_", "-"),
            color="input",
            dash_title=dash_title.replace("setting", "prompt / pooling"),
            reference=0.5 if task == "caption" else None,
            width=width,
            height=height,
            x_axis=x_axis,
            y_domain=[0, 1],
        )
        if not text.is_empty():
            floor = text["value"].mean()
            rule = (
                alt.Chart().mark_rule(color="black", strokeDash=[6, 3]).encode(y=alt.datum(floor))
            )
            chart = alt.layer(*chart.layer, rule, data=chart.data).properties(
                width=width, height=height
            )
        n_models = curves["model"].n_unique()
        panels.append(
            chart.facet(facet=alt.Facet("model:N", title="model"), columns=min(n_models, 3))
            .resolve_scale(x="independent" if x_axis == "layer" else "shared")
            .properties(title=_title(f"Baselines: {TASK_TITLES[task]}", curves))
        )
    if not panels:
        raise ValueError(
            "summary frame has no baselines (models named '<model>@<baseline>' or "
            f"{TEXT_EMBEDDING_BASE!r}); set models.<name>.baselines or caption.embedding_baseline"
        )
    return alt.hconcat(*panels)


def save_chart(
    chart: alt.TopLevelMixin,
    html_path: str | os.PathLike,
    png_path: str | os.PathLike,
    svg_path: str | os.PathLike | None = None,
    scale_factor: float = 2.0,
) -> None:
    """Write ``chart`` as self-contained HTML, PNG and (if given) SVG, each atomically, offline.

    The HTML inlines the Vega JavaScript (no CDN needed to view it); PNG and SVG are rendered
    by vl-convert, which bundles Vega and needs no browser or network.
    """
    with atomic_path(html_path) as tmp:
        chart.save(tmp, format="html", inline=True)
    with atomic_path(png_path) as tmp:
        chart.save(tmp, format="png", scale_factor=scale_factor)
    if svg_path is not None:
        with atomic_path(svg_path) as tmp:
            chart.save(tmp, format="svg")


def figure_frame(figure: Figure, paths: Sequence[str | os.PathLike]) -> pl.DataFrame:
    """The frame ``figure`` draws from: the summary (one path) or the probe tables (many)."""
    if figure.input == "summary":
        if len(paths) != 1:
            raise ValueError(f"a summary figure reads one summary file, got {len(paths)} paths")
        return pl.read_parquet(paths[0])
    return pl.concat([pl.read_parquet(path) for path in paths], how="diagonal_relaxed")


def negative_similarity_histogram(
    pairs: pl.DataFrame,
    width: int = 300,
    height: int = 200,
    bin_width: float = 0.02,
    near_duplicate: float = 0.95,
) -> alt.Chart:
    """Histogram of the mined hard negatives' cosine similarity to their positive caption.

    Reads the caption pairs table (negatives: ``label == 0``, with ``similarity``, ``split`` and
    ``negative_kind``); bars stacked by split, and by kind where the pairs hold several (mined
    next to random negatives shows what the mining buys), binned here (``bin_width``) so the
    chart embeds a few hundred counts, not every pair. The subtitle gives the mean and the number of
    negatives at or above ``near_duplicate`` (likely paraphrases of the positive, i.e.
    possible false negatives worth a look).
    """
    if not {"label", "similarity", "split", "negative_kind"} <= set(pairs.columns):
        raise ValueError("caption pairs lack columns label, similarity, split or negative_kind")
    negatives = pairs.filter(pl.col("label") == 0)
    several_kinds = negatives["negative_kind"].n_unique() > 1
    negatives = negatives.select(
        pl.concat_str("split", pl.lit(" "), "negative_kind").alias("split")
        if several_kinds
        else "split",
        "similarity",
    )
    if negatives.is_empty():
        raise ValueError("caption pairs have no negatives")
    bins = (
        negatives.with_columns(
            bin_start=(pl.col("similarity") / bin_width).floor().cast(pl.Float64) * bin_width
        )
        .group_by("split", "bin_start")
        .agg(pl.len().alias("negatives"))
        .with_columns(bin_end=pl.col("bin_start") + bin_width)
        .sort("split", "bin_start")
    )
    mean = float(negatives["similarity"].mean())
    close = int((negatives["similarity"] >= near_duplicate).sum())
    subtitle = (
        f"{negatives.height} negatives, mean similarity {mean:.3f}; "
        f"{close} at or above {near_duplicate} (possible paraphrases)"
    )
    return (
        alt.Chart(bins)
        .mark_bar()
        .encode(
            x=alt.X("bin_start:Q", bin="binned", title="cosine similarity to the positive caption"),
            x2="bin_end:Q",
            y=alt.Y("negatives:Q", stack=True, title="hard negatives"),
            color=alt.Color("split:N", title="split"),
            tooltip=[
                "split:N",
                alt.Tooltip("bin_start:Q", format=".2f", title="from"),
                alt.Tooltip("bin_end:Q", format=".2f", title="to"),
                "negatives:Q",
            ],
        )
        .properties(
            width=width,
            height=height,
            title=alt.TitleParams(
                "Hard negatives: similarity to their positive", subtitle=subtitle, anchor="start"
            ),
        )
    )
