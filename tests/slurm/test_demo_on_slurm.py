"""The demo workflow submitted to a real SLURM cluster through profiles/slurm.

Runs only inside `.ci/slurm.sh run -- pytest -m slurm tests/slurm` (it sets SLURM_CONF).
"""

import os

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from slurm_jobs import check, read_jobs, rule_of
from workflow_run import DEMO_RUN, ROOT, demo_config, snakemake, write_config

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif("SLURM_CONF" not in os.environ, reason="no SLURM cluster (.ci/slurm.sh)"),
]

# The same threads as a local run, so probes sum in the same order and the tables match exactly;
# device auto makes the extraction, first tokens and caption pairs request a GPU (this host's is
# declared on /dev/null).
SAME_AS_LOCAL = ["--set-threads", "image_passes=2", "probe=1", "caption_pairs=1"]
TABLES = [
    "results/data/images.parquet",
    "results/tasks/caption-tao.parquet",
    "results/tasks/object-withcat.parquet",
    "results/metrics/summary.parquet",
]


def test_demo_on_slurm_matches_a_local_run_and_requests_gpus(tmp_path):
    # one model without its baselines: the other models' jobs are like its own, and each SLURM
    # job costs seconds
    config = demo_config(
        **DEMO_RUN,
        **{
            "extract.device": "auto",
            "models.tiny-qwen2-vl.baselines": [],
            "caption.embedding_baseline": False,
        },
    )
    del config["models"]["tiny-llava"]
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for workdir in (local, cluster):
        workdir.mkdir()
        write_config(workdir, config)
    snakemake(local, "--cores", "2", "--configfile", "config.yaml")
    snakemake(
        cluster,
        "--profile", str(ROOT / "profiles/slurm"),
        "--workflow-profile", "none",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        "--configfile", "config.yaml",
        *SAME_AS_LOCAL,
    )  # fmt: skip
    for table in TABLES:
        assert_frame_equal(pl.read_parquet(cluster / table), pl.read_parquet(local / table))
    jobs = [job for job in read_jobs() if str(cluster) in job.get("WorkDir", "")]
    gpu_rules = {"image_passes", "extract", "first_tokens", "caption_pairs"}
    assert not check(jobs, gpu_rules, gpu_partition="gpu")
    # one image pass (1 part) for 3 tasks, each task's tables put in place by its own job (on a
    # GPU: it pools its task itself where nothing was staged); one first-token job
    assert sum(rule_of(job) == "image_passes" for job in jobs) == 1
    assert sum(rule_of(job) == "extract" for job in jobs) == 3
    assert sum(rule_of(job) == "first_tokens" for job in jobs) == 1
