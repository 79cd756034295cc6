"""A seeded sample of negatives with their positive, as Parquet and as HTML."""

import polars as pl

from vlprobe.joblog import job_log
from vlprobe.storage import write_parquet
from vlprobe.tasks import negative_examples, write_html_table

with job_log(snakemake.log[0]):
    examples = negative_examples(
        pl.read_parquet(snakemake.input[0]), snakemake.params.n, snakemake.params.seed
    )
    write_parquet(examples, snakemake.output.table)
    write_html_table(
        examples, snakemake.output.html, "Caption negatives: a sample, with their positive"
    )
