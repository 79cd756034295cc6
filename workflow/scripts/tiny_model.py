"""Build a tiny randomly initialised model of a real family, offline."""

from vlprobe.joblog import job_log
from vlprobe.models import build_tiny_model

with job_log(snakemake.log[0]):
    tiny = {**snakemake.params.tiny, "num_layers": snakemake.params.num_layers}
    build_tiny_model(snakemake.params.family, snakemake.output[0], tiny)
