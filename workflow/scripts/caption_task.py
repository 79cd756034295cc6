"""Fill one caption prompt variant into the caption pairs."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import build_variant, write_task

with job_log(snakemake.log[0]):
    task, metadata = build_variant(
        "caption",
        snakemake.wildcards.prompt,
        snakemake.params.spec,
        pl.read_parquet(snakemake.input[0]),
    )
    write_task(task, snakemake.output[0], metadata)
