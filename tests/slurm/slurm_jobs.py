"""What SLURM recorded about the jobs of a Snakemake run, and checks of the GPU requests.

The record is `scontrol show job -d --oneliner`: `.ci/slurm.sh run --dump-jobs FILE -- ...` writes
it just before the cluster stops (its MinJobAge keeps finished jobs for an hour), or, on a live
cluster, this module runs scontrol itself. Per job it holds what sbatch asked for and what the job
got: the Snakemake rule (the slurm executor submits with `--comment rule_<rule>[_wildcards_...]`),
Partition, JobState, TresPerJob (`--gpus=N` gives `gres:gpu:N`) or TresPerNode (`--gres=gpu:N`),
and, with -d, JOB_GRES (the generic resources allocated, e.g. `gpu:1`).

    python tests/slurm/slurm_jobs.py JOBS_FILE --gpu-rule extract [--gpu-partition gpu]

prints one line per job and exits 1 unless every job of the GPU rules asked for and was allocated
a GPU (on the given partition), no other job asked for one, and every job completed.
From Python: `check(parse_jobs(text), gpu_rules={"extract"})` returns the list of problems.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")
_RULE = re.compile(r"^rule_(.+?)(?:_wildcards_(.*))?$")
_GPU_TRES = re.compile(r"gres[:/]gpu(?::[\w.-]+)?[:=](\d+)")
_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[\w.-]+)?:(\d+)")


def parse_jobs(text: str) -> list[dict[str, str]]:
    """Jobs of `scontrol show job [-d] [--oneliner]` output, each as {field: value}.

    A field repeated within a job (per-node detail lines) keeps its first value. Values that
    contain ` word=` (a Command with such arguments) are cut there; the fields read here never do.
    """
    jobs = []
    for record in re.split(r"(?m)^\s*(?=JobId=)", text):
        record = record.strip()
        if not record.startswith("JobId="):
            continue
        matches = list(_KEY.finditer(record))
        job: dict[str, str] = {}
        for match, following in zip(matches, [*matches[1:], None], strict=True):
            end = following.start() if following else len(record)
            job.setdefault(match.group(1), record[match.end() : end].strip())
        jobs.append(job)
    return jobs


def read_jobs(path: str | Path | None = None) -> list[dict[str, str]]:
    """Jobs from a dump file, or from the live cluster (`scontrol show job -d --oneliner`)."""
    if path is not None:
        return parse_jobs(Path(path).read_text())
    out = subprocess.run(
        ["scontrol", "show", "job", "-d", "--oneliner"], capture_output=True, text=True, check=True
    )
    return parse_jobs(out.stdout)


def rule_of(job: dict[str, str]) -> str | None:
    """The Snakemake rule of a job submitted by the slurm executor, else None."""
    match = _RULE.match(job.get("Comment", ""))
    return match.group(1) if match else None


def gpus_requested(job: dict[str, str]) -> int:
    """GPUs asked for with --gpus / --gres / --gpus-per-node / --gpus-per-task (0 if none)."""
    return sum(
        int(n)
        for field in ("TresPerJob", "TresPerNode", "TresPerTask", "TresPerSocket")
        for n in _GPU_TRES.findall(job.get(field, ""))
    )


def gpus_allocated(job: dict[str, str]) -> int:
    """GPUs the job was allocated (JOB_GRES of `scontrol show job -d`; 0 if none)."""
    return sum(int(n) for n in _GPU_GRES.findall(job.get("JOB_GRES", "")))


def check(
    jobs: list[dict[str, str]],
    gpu_rules: set[str],
    gpu_partition: str | None = None,
    completed: bool = True,
) -> list[str]:
    """Problems with the GPU requests of a run (an empty list when all is well)."""
    problems = []
    snakemake_jobs = [job for job in jobs if rule_of(job) is not None]
    if not snakemake_jobs:
        problems.append("no job submitted by Snakemake's slurm executor (none has a rule_ comment)")
    for rule in sorted(gpu_rules - {rule_of(job) for job in snakemake_jobs}):
        problems.append(f"no job of GPU rule {rule}")
    for job in snakemake_jobs:
        rule, name = rule_of(job), f"job {job.get('JobId')} ({job.get('Comment')})"
        if completed and job.get("JobState") != "COMPLETED":
            problems.append(f"{name}: JobState={job.get('JobState')}, not COMPLETED")
        if rule in gpu_rules:
            if gpus_requested(job) < 1:
                problems.append(f"{name}: asked for no GPU ({tres(job)})")
            if gpus_allocated(job) < 1:
                problems.append(f"{name}: was allocated no GPU (JOB_GRES={job.get('JOB_GRES')})")
            if gpu_partition and job.get("Partition") != gpu_partition:
                problems.append(f"{name}: Partition={job.get('Partition')}, not {gpu_partition}")
        elif gpus_requested(job) or gpus_allocated(job):
            problems.append(f"{name}: not a GPU rule, but asked for a GPU ({tres(job)})")
    return problems


def tres(job: dict[str, str]) -> str:
    fields = ("TresPerJob", "TresPerNode", "TresPerTask", "JOB_GRES")
    shown = [f"{field}={job[field]}" for field in fields if job.get(field, "(null)") != "(null)"]
    return " ".join(shown) or "no GPU TRES"


def summary(job: dict[str, str]) -> str:
    return (
        f"{job.get('JobId'):>6} {rule_of(job) or '-':<16} {job.get('Partition', ''):<8} "
        f"{job.get('JobState', ''):<10} gpus asked={gpus_requested(job)} "
        f"allocated={gpus_allocated(job)}  {tres(job)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "jobs", nargs="?", help="dump of `scontrol show job -d --oneliner` (default: ask scontrol)"
    )
    parser.add_argument(
        "--gpu-rule", action="append", default=[], help="a rule whose jobs must get a GPU"
    )
    parser.add_argument("--gpu-partition", help="the partition the GPU rules' jobs must run on")
    parser.add_argument(
        "--any-state", action="store_true", help="do not require every job to be COMPLETED"
    )
    args = parser.parse_args(argv)
    jobs = read_jobs(args.jobs)
    for job in jobs:
        print(summary(job))
    problems = check(jobs, set(args.gpu_rule), args.gpu_partition, completed=not args.any_state)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: GPU requests of {', '.join(sorted(args.gpu_rule)) or 'no rule'} as expected")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
