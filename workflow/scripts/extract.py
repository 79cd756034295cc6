"""Pool every layer's hidden states of one (model, task, part) into layer-shard tables."""

import polars as pl

from vlprobe.extract import run_extraction
from vlprobe.joblog import job_log
from vlprobe.tasks import extraction_samples, read_task

with job_log(snakemake.log[0]):
    task, task_metadata = read_task(snakemake.input.task)
    samples = extraction_samples(
        task,
        pl.read_parquet(snakemake.input.images),
        snakemake.params.images_dir,
        int(snakemake.wildcards.part),
        snakemake.params.parts,
    )
    run_extraction(
        model_name=snakemake.wildcards.model,
        # the batch sizes are resources: how a job runs, so editing them reruns nothing
        model_entry={**snakemake.params.model, "batch_size": snakemake.resources.entry_batch_size},
        batch_size=snakemake.resources.batch_size,
        samples=samples,
        poolings=snakemake.params.poolings,
        shards=snakemake.params.shards,
        out_dir=snakemake.output[0],
        device=snakemake.resources.device,
        threads=snakemake.threads,
        chunk_samples=snakemake.resources.chunk_samples,
        max_side=snakemake.params.max_side,
        storage_dtype=snakemake.params.storage_dtype,
        metadata={"task": snakemake.wildcards.task, **task_metadata},
    )
