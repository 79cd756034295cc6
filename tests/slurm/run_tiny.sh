#!/usr/bin/env bash
# End-to-end check of profiles/slurm on the throwaway cluster of .ci/slurm.sh:
#
#   tests/slurm/run_tiny.sh [WORKDIR]
#
# copies tests/slurm/Snakefile (rules `probe` and `extract`, the latter with resources: gpu=1) and
# profiles/slurm/config.yaml into WORKDIR (default: a new temporary directory, removed on
# success), runs it with `snakemake --profile` on the cluster, and checks that
#   - the workflow completed,
#   - SLURM recorded `extract` asking for and being allocated a GPU on partition gpu, and `probe`
#     asking for none (tests/slurm/slurm_jobs.py on the `scontrol show job -d` dump),
#   - inside the `extract` job, CUDA_VISIBLE_DEVICES was set (SLURM bound the fake GPU).
# Environment: PYTHON (default: .venv/bin/python of this checkout), SNAKEMAKE_ARGS (extra args).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
work=${1:-}
own=0
if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/slurm-tiny.XXXXXX")
    own=1
fi
mkdir -p "$work/profile"
cp "$root/tests/slurm/Snakefile" "$work/Snakefile"
cp "$root/profiles/slurm/config.yaml" "$work/profile/config.yaml"
cd "$work"

status=0
# shellcheck disable=SC2086
"$root/.ci/slurm.sh" run --dump-jobs "$work/jobs.txt" -- \
    "$python" -m snakemake --profile profile --slurm-no-account \
    --slurm-init-seconds-before-status-checks 2 ${SNAKEMAKE_ARGS:-} || status=$?
if [ $status -ne 0 ]; then
    echo "run_tiny: snakemake failed ($status); see $work" >&2
    exit 1
fi
"$python" "$root/tests/slurm/slurm_jobs.py" "$work/jobs.txt" --gpu-rule extract --gpu-partition gpu
grep -q 'CUDA_VISIBLE_DEVICES=[0-9]' gpu.txt ||
    { echo "run_tiny: the extract job saw no GPU: $(cat gpu.txt)" >&2; exit 1; }
echo "run_tiny: ok ($(cat gpu.txt))"
if [ $own -eq 1 ]; then rm -rf "$work"; fi
