"""Figures: layer-by-layer probe scores as Altair charts, saved as offline HTML and PNG.

Charts read the tidy summary frame (model, task, pooling, prompt, probe, layer, metric, value,
optionally ci_low and ci_high). Hidden-state index on the x axis (0 = input embeddings).
"""

from __future__ import annotations

import os

import altair as alt
import polars as pl

from vlprobe.storage import atomic_path

SUMMARY_COLUMNS = ("model", "task", "pooling", "prompt", "probe", "layer", "metric", "value")
LAYER_AXIS = alt.Axis(format="d", tickMinStep=1)
TOOLTIP_FIELDS = ("model:N", "pooling:N", "prompt:N", "probe:N", "layer:Q")


def _rows(summary: pl.DataFrame, task: str, metric: str) -> pl.DataFrame:
    """The rows of one task and metric; ``ci_low``/``ci_high`` kept when both are present."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ValueError(f"summary frame lacks columns {missing}")
    rows = summary.filter((pl.col("task") == task) & (pl.col("metric") == metric))
    if rows.is_empty():
        raise ValueError(f"summary frame has no {task} rows with metric {metric!r}")
    has_ci = {"ci_low", "ci_high"} <= set(rows.columns)
    return rows.select(*SUMMARY_COLUMNS, *(["ci_low", "ci_high"] if has_ci else []))


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
    chance: float | None,
    width: int,
    height: int,
) -> alt.LayerChart:
    """Lines coloured by ``color`` and dashed by ``variant``, with points, not yet faceted.

    A confidence band is drawn when the rows carry one; a dotted rule marks ``chance``.
    """
    x = alt.X("layer:Q", axis=LAYER_AXIS, title="layer (hidden-state index)")
    y = alt.Y("value:Q", title=y_title, scale=alt.Scale(domain=[0, 1]))
    # opaque legend symbols, though the band layer shares the colour scale at low opacity
    colour = alt.Color(f"{color}:N", title=color, legend=alt.Legend(symbolOpacity=1))
    lines = (
        alt.Chart()
        .mark_line()
        .encode(x=x, y=y, color=colour, strokeDash=alt.StrokeDash("variant:N", title=dash_title))
    )
    points = (
        alt.Chart()
        .mark_point(filled=True, size=30)
        .encode(
            x=x,
            y=y,
            color=colour,
            tooltip=[*TOOLTIP_FIELDS, alt.Tooltip("value:Q", format=".3f")],
        )
    )
    layers: list[alt.Chart] = []
    if "ci_low" in rows.columns and rows["ci_low"].is_not_null().any():
        band = (
            alt.Chart()
            .mark_area(opacity=0.15)
            .encode(x=x, y="ci_low:Q", y2="ci_high:Q", color=colour, detail="variant:N")
        )
        layers.append(band)
    if chance is not None:
        layers.append(
            alt.Chart().mark_rule(color="gray", strokeDash=[2, 2]).encode(y=alt.datum(chance))
        )
    layers += [lines, points]
    return alt.layer(*layers, data=rows).properties(width=width, height=height)


def caption_accuracy_chart(
    summary: pl.DataFrame, width: int = 300, height: int = 200
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
        chance=0.5,
        width=width,
        height=height,
    )
    return chart.facet(column=alt.Column("pooling:N", title="pooling")).properties(
        title="Caption entailment (global semantics)"
    )


def object_f1_chart(summary: pl.DataFrame, width: int = 300, height: int = 200) -> alt.FacetChart:
    """Object-recognition macro-F1 per layer: one panel per model, one colour per prompt.

    Prompt variants (e.g. nocat, withcat) are colours; poolings (and probes, if several) are
    dashes. Each model keeps its own layer axis, since models differ in depth.
    """
    rows, variant_title = _with_variant(_rows(summary, "object", "macro_f1"), "pooling")
    chart = _lines(
        rows,
        y_title="macro-F1",
        color="prompt",
        dash_title=variant_title,
        chance=None,
        width=width,
        height=height,
    )
    n_models = rows["model"].n_unique()
    return (
        chart.facet(facet=alt.Facet("model:N", title="model"), columns=min(n_models, 3))
        .resolve_scale(x="independent")
        .properties(title="Object recognition (local semantics)")
    )


def save_chart(
    chart: alt.TopLevelMixin,
    html_path: str | os.PathLike,
    png_path: str | os.PathLike,
    scale_factor: float = 2.0,
) -> None:
    """Write ``chart`` as self-contained HTML and as PNG, each atomically and offline.

    The HTML inlines the Vega JavaScript (no CDN needed to view it); the PNG is rendered by
    vl-convert, which bundles Vega and needs no browser or network.
    """
    with atomic_path(html_path) as tmp:
        chart.save(tmp, format="html", inline=True)
    with atomic_path(png_path) as tmp:
        chart.save(tmp, format="png", scale_factor=scale_factor)


# figure name -> the function drawing it from the summary (the workflow's `figure` rule)
FIGURES = {"caption_accuracy": caption_accuracy_chart, "object_f1": object_f1_chart}
