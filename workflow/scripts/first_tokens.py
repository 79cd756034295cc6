"""The first greedy token after each object prompt, for one category: top-k tables."""

import torch

from vlprobe.first_tokens import run_first_token_job
from vlprobe.joblog import job_log

with job_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    run_first_token_job(
        model_name=snakemake.wildcards.model,
        model_entry=snakemake.params.model,
        task_paths=dict(zip(snakemake.params.prompts, snakemake.input.tasks, strict=True)),
        images_path=snakemake.input.images,
        images_dir=snakemake.params.images_dir,
        category=snakemake.params.category,
        out_path=snakemake.output.table,
        batch_size=snakemake.resources.batch_size,
        device=snakemake.resources.device,
        top_k=snakemake.params.top_k,
        max_side=snakemake.params.max_side,
    )
