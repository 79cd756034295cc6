"""Fill one object prompt variant (NoCat, WithCat or statement) into the object rows."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import build_variant, category_names, write_task

with job_log(snakemake.log[0]):
    task, metadata = build_variant(
        "object",
        snakemake.wildcards.prompt,
        snakemake.params.spec,
        pl.read_parquet(snakemake.input.rows),
        names=category_names(snakemake.input.instances),
    )
    write_task(task, snakemake.output[0], metadata)
