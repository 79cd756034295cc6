"""Train and evaluate the probes of one layer-shard."""

from vlprobe.joblog import job_log
from vlprobe.probes import run_probe_job

with job_log(snakemake.log[0]):
    run_probe_job(
        task_path=snakemake.input.task,
        part_dirs=snakemake.input.parts,
        shard=(int(snakemake.wildcards.first), int(snakemake.wildcards.last)),
        pooling=snakemake.wildcards.pooling,
        probe=snakemake.wildcards.probe,
        probe_config=snakemake.params.probe,
        model=snakemake.wildcards.model,
        out_path=snakemake.output.table,
        evaluation=snakemake.params.evaluation,
        scores_path=snakemake.output.scores,
        device=snakemake.resources.device,
    )
