"""Fill one object prompt variant (NoCat or WithCat) into the object rows."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import category_names, object_task, write_task

with job_log(snakemake.log[0]):
    prompt = snakemake.params.prompt
    rows = pl.read_parquet(snakemake.input.rows)
    task = object_task(rows, prompt["template"], prompt["categories"], snakemake.params.seed)
    metadata = {
        "kind": "object",
        "prompt": snakemake.wildcards.prompt,
        **prompt,
        "label_names": category_names(snakemake.input.instances),
    }
    write_task(task, snakemake.output[0], metadata)
