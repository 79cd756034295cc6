"""Embed each caption alone with the sentence model: the text-embedding baseline's activations."""

from vlprobe.baselines import write_text_embedding_activations
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    write_text_embedding_activations(
        snakemake.input.task,
        snakemake.params.embedding_model,
        snakemake.output[0],
        device=snakemake.resources.device,
    )
