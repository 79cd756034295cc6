"""Present categories of every sampled image."""

import polars as pl

from vlprobe.data import split_files
from vlprobe.joblog import job_log
from vlprobe.storage import write_parquet
from vlprobe.tasks import build_object_rows

with job_log(snakemake.log[0]):
    rows = build_object_rows(
        pl.read_parquet(snakemake.input.images), split_files(snakemake.input, "instances")
    )
    write_parquet(rows, snakemake.output[0])
