"""The lock, pyproject's ranges and the conda environment agree: a refresh that skipped one of
them (``make lock``) fails here."""

import importlib.util
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
ENV = ROOT / "envs" / "vlprobe.yaml"


def lock_entries() -> list[tuple[Requirement, int]]:
    """Each requirement of the lock with the number of hashes it carries."""
    entries: list[tuple[Requirement, int]] = []
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            entries.append((Requirement(line.removesuffix("\\")), 0))
        elif line.strip().startswith("--hash=sha256:"):
            requirement, hashes = entries[-1]
            entries[-1] = (requirement, hashes + 1)
    return entries


def locked_versions() -> dict[str, list[str]]:
    """Each locked package's versions (several where markers split one)."""
    versions: dict[str, list[str]] = {}
    for requirement, _ in lock_entries():
        version = str(requirement.specifier).removeprefix("==")
        versions.setdefault(canonicalize_name(requirement.name), []).append(version)
    return versions


def test_every_lock_entry_is_an_exact_pin_with_its_hashes():
    entries = lock_entries()
    assert len(entries) > 100  # transitive dependencies included
    for requirement, hashes in entries:
        assert len(requirement.specifier) == 1, requirement
        assert next(iter(requirement.specifier)).operator == "==", requirement
        assert hashes, f"{requirement} has no hash"


def test_the_lock_satisfies_pyproject_and_holds_the_torch_build_the_tests_run_on():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_in = (ROOT / "requirements" / "torch.in").read_text().splitlines()
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["dev"],
        *(line for line in torch_in if line and not line.startswith("#")),
    ]
    versions = locked_versions()
    for line in wanted:
        requirement = Requirement(line)
        pinned = versions.get(canonicalize_name(requirement.name))
        assert pinned, f"{requirement.name} is not in the lock"
        assert all(requirement.specifier.contains(v) for v in pinned), (line, pinned)


def test_the_conda_environment_is_the_lock_as_make_lock_writes_it():
    spec = importlib.util.spec_from_file_location("conda_env", ROOT / "requirements/conda_env.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert ENV.read_text() == generator.conda_env(LOCK.relative_to(ROOT))
    env = yaml.safe_load(ENV.read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    assert [Requirement(line) for line in pip[:-1]] == [r for r, _ in lock_entries()]
    assert pip[-1] == "-e .."
