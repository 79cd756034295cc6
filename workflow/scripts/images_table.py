"""Sample the train/eval split, fetch the images if they come from the web, verify each."""

from vlprobe.data import split_sources, write_images_table
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    write_images_table(
        split_sources(snakemake.input, snakemake.params.images_dir),
        snakemake.params.n_images,
        snakemake.params.seed,
        snakemake.params.on_bad_image,
        snakemake.output.images,
        snakemake.output.skipped,
        base_url=snakemake.params.base_url,
        workers=snakemake.resources.download_workers,
    )
