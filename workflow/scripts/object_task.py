"""Fill one object prompt variant (NoCat, WithCat or statement) into the object rows."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import category_names, object_task, write_task

with job_log(snakemake.log[0]):
    prompt = snakemake.params.prompt
    rows = pl.read_parquet(snakemake.input.rows)
    names = category_names(snakemake.input.instances)
    task = object_task(
        rows,
        prompt["template"],
        prompt["categories"],
        snakemake.params.seed,
        names=names,
        absent_per_image=prompt.get("absent_per_image"),
    )
    metadata = {
        "kind": "object",
        "prompt": snakemake.wildcards.prompt,
        **prompt,
        "label_names": names,
    }
    write_task(task, snakemake.output[0], metadata)
