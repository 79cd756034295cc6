"""Running the workflow from tests: snakemake in a work directory, demo configs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a workflow run from the tests: offline, plus ``extra``."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", **(extra or {})}


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=run_env(env),
        cwd=workdir,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def demo_config(**overrides) -> dict:
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


def write_config(workdir: Path, config: dict) -> str:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


DEMO_RUN = {
    "coco.demo.n_images": 24,
    "coco.n_train_images": 16,
    "coco.n_eval_images": 8,
    "caption.positives_per_image": 2,
    "probes.linear.epochs": 15,
    # fewer, larger jobs: every job pays the interpreter and torch start-up
    "extract.parts": 1,
    # several resumable chunks per extraction job (the kill test interrupts between them)
    "extract.chunk_samples": 24,
    "extract.layers_per_shard": 5,
    "extract.poolings": ["mean"],
}


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule from the job stats table a dry-run prints."""
    counts: dict[str, int] = {}
    lines = result.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Job stats:")), None)
    if start is None:
        return counts
    for line in lines[start + 3 :]:  # after the header and the dashes
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts
