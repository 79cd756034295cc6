"""Fill one caption prompt variant into the caption pairs."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.tasks import ENTAILMENT, caption_task, write_task

with job_log(snakemake.log[0]):
    template = snakemake.params.template
    task = caption_task(pl.read_parquet(snakemake.input[0]), template)
    metadata = {
        "kind": "caption",
        "prompt": snakemake.wildcards.prompt,
        "template": template,
        "label_names": [ENTAILMENT],
    }
    write_task(task, snakemake.output[0], metadata)
