"""The best layer of every model, task, prompt, pooling and probe, with its interval."""

from vlprobe.joblog import job_log
from vlprobe.metrics import write_best_layers

with job_log(snakemake.log[0]):
    write_best_layers(snakemake.input[0], snakemake.output[0])
