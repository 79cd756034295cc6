"""One model's extraction of one part of the images: the image pass over every task and prompt
variant (rule image_passes), or one task's tables (rule extract). One script for both, so that a
change to it reruns both."""

import polars as pl

from vlprobe.extract import ExtractionJob, TaskPart, write_pass_summary
from vlprobe.joblog import job_log
from vlprobe.tasks import (
    build_variant,
    category_names,
    extraction_samples,
    read_task,
    variant_spec,
)

with job_log(snakemake.log[0]):
    images = pl.read_parquet(snakemake.input.images)
    part = int(snakemake.wildcards.part)

    def task_part(task, table, metadata):
        samples = extraction_samples(
            table, images, snakemake.params.images_dir, part, snakemake.params.parts
        )
        return TaskPart(task, samples, metadata)

    job = ExtractionJob(
        model_name=snakemake.wildcards.model,
        # the batch sizes are resources: how a job runs, so editing them reruns nothing
        model_entry={**snakemake.params.model, "batch_size": snakemake.resources.entry_batch_size},
        poolings=snakemake.params.poolings,
        shards=snakemake.params.shards,
        max_side=snakemake.params.max_side,
        storage_dtype=snakemake.params.storage_dtype,
        device=snakemake.resources.device,
        threads=snakemake.threads,
        batch_size=snakemake.resources.batch_size,
        chunk_samples=snakemake.resources.chunk_samples,
    )
    if snakemake.rule == "image_passes":
        # every variant of the study's config, filled as the task rules fill them: which
        # tables to stage, not what any of them holds (see workflow/rules/extract.smk)
        config, inputs = snakemake.config, snakemake.input
        labels = {
            "caption": pl.read_parquet(inputs.caption_pairs),
            "object": pl.read_parquet(inputs.object_rows),
        }
        names = category_names(inputs.instances)
        parts = []
        for kind in ("caption", "object"):
            for prompt in config[kind]["prompts"]:
                spec = variant_spec(config, kind, prompt)
                table = build_variant(kind, prompt, spec, labels[kind], names)
                parts.append(task_part(f"{kind}-{prompt}", *table))
        status = job.run_passes(
            parts,
            snakemake.params.staging,
            published=lambda task: snakemake.params.published.format(task=task),
        )
        write_pass_summary(status, snakemake.output[0])
    else:
        job.publish(
            task_part(snakemake.wildcards.task, *read_task(snakemake.input.task)),
            snakemake.params.staging,
            snakemake.output[0],
        )
