"""Positive captions and their negatives (mined or drawn) for caption entailment."""

import polars as pl

from vlprobe.data import split_files
from vlprobe.joblog import job_log
from vlprobe.storage import write_parquet
from vlprobe.tasks import build_caption_pairs

with job_log(snakemake.log[0]):
    pairs = build_caption_pairs(
        pl.read_parquet(snakemake.input.images),
        split_files(snakemake.input, "captions"),
        split_files(snakemake.input, "pool"),
        snakemake.params.positives_per_image,
        snakemake.params.candidates_per_positive,
        snakemake.params.embedding_model,
        snakemake.params.seed,
        snakemake.params.negatives,
        device=snakemake.resources.device,
    )
    write_parquet(pairs, snakemake.output[0])
