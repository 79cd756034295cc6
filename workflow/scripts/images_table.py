"""Sample the train/eval split and verify every sampled image."""

from vlprobe.data import CocoFiles, write_images_table
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    files = CocoFiles(snakemake.input.instances, snakemake.input.captions, snakemake.input.images)
    write_images_table(
        files,
        snakemake.params.n_train,
        snakemake.params.n_eval,
        snakemake.params.seed,
        snakemake.params.on_bad_image,
        snakemake.output.images,
        snakemake.output.skipped,
    )
