"""Fill one caption prompt variant into the caption pairs."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import caption_task, write_task

with job_log(snakemake.log[0]):
    task, metadata = caption_task(
        pl.read_parquet(snakemake.input[0]),
        snakemake.wildcards.prompt,
        snakemake.params.template,
        snakemake.params.negatives,
    )
    write_task(task, snakemake.output[0], metadata)
