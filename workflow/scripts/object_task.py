"""Fill one object prompt variant (NoCat, WithCat or statement) into the object rows."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import category_names, object_task, write_task

with job_log(snakemake.log[0]):
    prompt = snakemake.params.prompt
    task, metadata = object_task(
        pl.read_parquet(snakemake.input.rows),
        snakemake.wildcards.prompt,
        prompt["template"],
        prompt["categories"],
        snakemake.params.seed,
        names=category_names(snakemake.input.instances),
        absent_per_image=prompt.get("absent_per_image"),
    )
    write_task(task, snakemake.output[0], metadata)
