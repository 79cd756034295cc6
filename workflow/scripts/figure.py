"""Draw one figure from the summary as HTML and PNG."""

import polars as pl

from vlprobe.figures import FIGURES, save_chart
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    draw = FIGURES[snakemake.wildcards.figure]
    chart = draw(pl.read_parquet(snakemake.input[0]), **snakemake.params.style)
    save_chart(chart, snakemake.output.html, snakemake.output.png)
