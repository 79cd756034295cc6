"""Histogram of the caption negatives' similarity to their positive, as HTML and PNG."""

import polars as pl

from vlprobe.figures import negative_similarity_histogram, save_chart
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    pairs = pl.read_parquet(
        snakemake.input[0], columns=["label", "split", "similarity", "negative_kind"]
    )
    chart = negative_similarity_histogram(
        pairs, width=snakemake.params.width, height=snakemake.params.height
    )
    save_chart(chart, snakemake.output.html, snakemake.output.png)
