"""Write the conda environment of every rule from the lock: python, pip, and each locked package
at its locked version (markers kept), then vlprobe itself.

Usage: python requirements/conda_env.py requirements/lock.txt envs/vlprobe.yaml (``make lock``).
The pins are in the environment file itself, not behind a ``-r``, because Snakemake rebuilds an
environment only when its file changes.
"""

import sys
from pathlib import Path

HEADER = """\
# Generated from {lock} by requirements/conda_env.py (make lock): do not edit.
# The environment of every rule under --software-deployment-method conda: the lock's packages at
# the lock's versions, through pip, and the vlprobe library from this checkout.
channels: [conda-forge, nodefaults]
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def locked_requirements(lock_text: str) -> list[str]:
    """The lock's requirement lines (``name==version`` with any marker), without hashes."""
    return [
        line.removesuffix("\\").strip()
        for line in lock_text.splitlines()
        if line and not line[0].isspace() and not line.startswith("#")
    ]


def conda_env(lock: Path) -> str:
    pins = [f'      - "{requirement}"\n' for requirement in locked_requirements(lock.read_text())]
    # conda runs pip from the environment file's directory
    return HEADER.format(lock=lock.as_posix()) + "".join(pins) + "      - -e ..\n"


if __name__ == "__main__":
    lock, out = map(Path, sys.argv[1:])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(conda_env(lock))
    tmp.replace(out)
