"""Gather every probe table into the tidy summary."""

from vlprobe.joblog import job_log
from vlprobe.metrics import write_summary

with job_log(snakemake.log[0]):
    write_summary(snakemake.input, snakemake.output[0])
