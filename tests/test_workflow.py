"""The workflow for real: config validation, the paper-scale DAG, and the demo run end to end."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal
from workflow_run import (
    DEMO_RUN,
    ROOT,
    SNAKEMAKE,
    demo_config,
    planned_jobs,
    run_env,
    snakemake,
    write_config,
)

from vlprobe.baselines import MODEL_BASELINES
from vlprobe.extract import INDEX_POOLING, POOLINGS
from vlprobe.models import CONFIG_FAMILIES
from vlprobe.models.base import DTYPES, PROMPT_FORMATS
from vlprobe.settings import PROBE_KINDS
from vlprobe.storage import STORAGE_DTYPES
from vlprobe.tasks import read_task


@pytest.mark.parametrize(
    ("dotted", "value", "error"),
    [
        (
            "coco.n_train_imagez",
            10,
            "config coco: Additional properties are not allowed ('n_train_imagez' was unexpected)",
        ),
        ("extract.parts", "two", "config extract.parts: 'two' is not of type 'integer'"),
        ("prompt_format", "chatml", "config prompt_format: 'chatml' is not one of ['raw', 'chat']"),
        (
            "models.tiny-llava.family",
            "llama",
            # the schema lists exactly the registry's families
            f"config models.tiny-llava.family: 'llama' is not one of {CONFIG_FAMILIES}",
        ),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, dotted, value, error):
    config = write_config(tmp_path, demo_config(**{dotted: value}))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", config, check=False)
    assert result.returncode != 0
    # one line names the key and what is wrong with it (not jsonschema's schema dump)
    assert error in (result.stdout + result.stderr).splitlines()
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_schema_enums_are_the_library_registries():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    entry = schema["properties"]["models"]["additionalProperties"]["properties"]
    assert entry["family"]["enum"] == CONFIG_FAMILIES  # the registry and auto
    assert entry["dtype"]["enum"] == ["auto", *DTYPES]
    assert entry["baselines"]["items"]["enum"] == list(MODEL_BASELINES)
    assert entry["prompt_format"]["enum"] == schema["properties"]["prompt_format"]["enum"]
    assert entry["prompt_format"]["enum"] == list(PROMPT_FORMATS)
    probes = schema["properties"]["probes"]["additionalProperties"]["properties"]
    assert probes["kind"]["enum"] == sorted(PROBE_KINDS)
    extract = schema["properties"]["extract"]["properties"]
    assert extract["storage_dtype"]["enum"] == list(STORAGE_DTYPES)
    pooling = extract["poolings"]["items"]["pattern"]
    *names, index = pooling.removeprefix("^(").removesuffix(")$").split("|")
    assert names == list(POOLINGS)
    for name in ("index:0", "index:-1", "index:12", "index:", "index:a", "index:+1"):
        assert bool(re.fullmatch(index, name)) == bool(INDEX_POOLING.fullmatch(name)), name


def test_schema_types_every_tiny_key_a_family_reads():
    """The schema's tiny keys are those every family reads and each family's own (its
    tiny_defaults, the one place that says which family reads which)."""
    from vlprobe.models import FAMILIES
    from vlprobe.models.base import TINY_DEFAULTS

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    tiny = schema["properties"]["models"]["additionalProperties"]["properties"]["tiny"]
    own = {key for adapter in FAMILIES.values() for key in adapter.tiny_defaults}
    assert set(tiny["properties"]) == (set(TINY_DEFAULTS) - {"num_layers"}) | own


def commented_model_entries(config_text: str) -> dict[str, dict]:
    """The commented-out entries under ``models:`` (a ``  # name:`` line and the
    ``  #   key: value`` lines after it), uncommented."""
    section = config_text.split("\nmodels:\n", 1)[1].split("\n\n", 1)[0]
    entries: list[list[str]] = []
    for line in section.splitlines():
        if re.fullmatch(r"  # [\w.-]+:\s*(#.*)?", line):
            entries.append([])
        elif not (entries and re.match(r"  #   [\w]+:", line)):
            continue
        entries[-1].append(line.removeprefix("  # "))
    return {
        name: model for lines in entries for name, model in yaml.safe_load("\n".join(lines)).items()
    }


def test_commented_model_entries_are_valid_entries():
    """Each commented checkpoint of config/config.yaml, uncommented, is a valid entry of a
    registered family; one whose depth was not known here fails on num_layers alone, so the
    user is told the one key to set."""
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    validator = Draft202012Validator({**schema["properties"]["models"], "$defs": schema["$defs"]})
    entries = commented_model_entries((ROOT / "config" / "config.yaml").read_text())
    assert len(entries) > 60 and "any-vlm" in entries
    for name, model in entries.items():
        errors = [
            list(e.absolute_path) + [e.validator] for e in validator.iter_errors({name: model})
        ]
        unset = (
            [[name, "num_layers", "minimum"]]
            if model.get("num_layers") == 0
            else [[name, "required"]]
        )
        assert errors in ([], unset), (name, errors)


@pytest.mark.parametrize("path", ["config.yaml", "studies/tao2024.yaml", "studies/compact.yaml"])
def test_paper_scale_dag_plans_every_task_model_and_shard(tmp_path, path):
    """The full study and each paper's own config plan without network."""
    config = yaml.safe_load((ROOT / "config" / path).read_text())
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / path))
    counts = planned_jobs(result)
    n_tasks = len(config["caption"]["prompts"]) + len(config["object"]["prompts"])
    n_parts = config["extract"]["parts"]
    per_shard = config["extract"]["layers_per_shard"]
    shards = sum(-(-(m["num_layers"] + 1) // per_shard) for m in config["models"].values())
    assert counts["extract"] == len(config["models"]) * n_tasks * n_parts
    assert counts["probe"] == (
        shards * n_tasks * len(config["extract"]["poolings"]) * len(config["probes"])
    )
    assert counts["first_tokens"] == len(config["models"])
    assert counts["figure"] == 7 and counts["best_layers"] == 1  # no baselines configured
    assert counts["caption_pairs"] == 1 and counts["summary"] == 1
    assert counts["coco_annotations"] == 1 and counts["images_table"] == 1


def planned_resources(result: subprocess.CompletedProcess) -> dict[str, list[dict[str, str]]]:
    """Per rule, the wildcards and resources of each job a dry run prints."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule, wildcards = None, {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if line.startswith("rule "):
            rule, wildcards = line.removeprefix("rule ").rstrip(":"), {}
        elif key == "wildcards":
            wildcards = dict(item.split("=", 1) for item in value.split(", "))
        elif key == "resources" and rule is not None:
            resources = dict(item.split("=", 1) for item in value.split(", "))
            jobs.setdefault(rule, []).append({**wildcards, **resources})
    return jobs


def test_paper_scale_jobs_declare_memory_and_the_gpu(tmp_path):
    """Extraction, probe and caption jobs declare memory sized from the config; the caption pool
    is embedded on the GPU when the study runs there; a probe job of more rows, or of a wider
    model, declares more."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["extract"]["device"] = "cuda"
    config["probe_device"] = "cuda"
    path = write_config(tmp_path, config)
    jobs = planned_resources(snakemake(tmp_path, "-n", "--configfile", path))
    for rule in ("image_passes", "extract", "probe", "caption_pairs", "first_tokens"):
        assert jobs[rule] and all(int(job["mem_mb"]) > 1000 for job in jobs[rule]), rule
    for rule in ("image_passes", "extract", "probe"):
        assert all(int(job["runtime"]) >= 10 for job in jobs[rule]), rule
    for rule in ("image_passes", "extract", "first_tokens", "caption_pairs"):
        assert all(job["gpu"] == "1" for job in jobs[rule]), rule
    # linear probes fit on the GPU; logreg's solver stays on the CPU and asks for none
    assert {(job["probe"], job["gpu"]) for job in jobs["probe"]} == {
        ("linear", "1"),
        ("logreg", "0"),
    }
    probe_mb = sorted({int(job["mem_mb"]) for job in jobs["probe"]})
    assert len(probe_mb) > 2  # by task rows, layers per shard and hidden size
    # what one 4-layer caption shard of Qwen2-VL-2B holds: 22,000 images x 10 pairs of
    # 4 x 1,536 float32 values, more than once
    caption_shard = 22_000 * 10 * 4 * 1536 * 4 / 2**20
    assert caption_shard < max(probe_mb) < 6 * caption_shard


@pytest.mark.parametrize("config", ["demo.yaml", "config.yaml"])
def test_the_workflow_parses_and_plans_without_torch_transformers_or_altair(tmp_path, config):
    """Every dry run, DAG and cluster job step parses the workflow: it imports none of them."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for package in ("torch", "transformers", "altair"):
        (blocked / f"{package}.py").write_text(
            f"raise ImportError('{package} imported while parsing the workflow')\n"
        )
    env = {"PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / config), env=env)
    assert planned_jobs(result)["all"] == 1


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo DAG at a reduced size, run for real."""
    workdir = tmp_path_factory.mktemp("demo")
    config = demo_config(**DEMO_RUN)
    path = write_config(workdir, config)
    snakemake(workdir, "--cores", "2", "--configfile", path)
    return workdir


def test_demo_summary_has_one_row_per_layer_and_metric(demo_run):
    config = yaml.safe_load((demo_run / "config.yaml").read_text())
    summary = pl.read_parquet(demo_run / "results/metrics/summary.parquet")
    assert {"model", "task", "pooling", "prompt", "layer", "metric", "value"} <= set(
        summary.columns
    )
    keys = ["model", "task", "prompt", "pooling", "probe", "layer", "metric"]
    assert summary.select(keys).is_duplicated().sum() == 0
    for model, entry in config["models"].items():
        layers = summary.filter(pl.col("model") == model)["layer"].unique().sort()
        assert layers.to_list() == list(range(entry["num_layers"] + 1))
    caption = summary.filter(pl.col("task") == "caption")
    assert set(caption["metric"]) >= {"accuracy", "precision", "recall", "f1"}
    assert caption.filter(pl.col("metric") == "accuracy")["value"].is_between(0, 1).all()
    objects = summary.filter(pl.col("task") == "object")
    assert set(objects["prompt"]) == {"nocat", "withcat"}
    assert "macro_f1" in set(objects["metric"])
    models = {*config["models"], "tiny-qwen2-vl@random_init", "tiny-qwen2-vl@blank_image"}
    vlm_rows = summary.filter(pl.col("model") != "captions@text_embedding")
    assert set(vlm_rows["model"]) == models
    expected_groups = len(models) * 3 * len(config["extract"]["poolings"])
    assert vlm_rows.select("model", "task", "prompt", "pooling").n_unique() == expected_groups
    text = summary.filter(pl.col("model") == "captions@text_embedding")
    assert set(text["task"]) == {"caption"} and set(text["layer"]) == {0}
    # intervals from the bootstrap around every point, control and selectivity rows
    accuracy = caption.filter(pl.col("metric") == "accuracy")
    assert (accuracy["ci_low"] <= accuracy["value"]).all()
    assert (accuracy["value"] <= accuracy["ci_high"]).all()
    assert {"control_accuracy", "selectivity_accuracy"} <= set(caption["metric"])
    assert (summary.filter(pl.col("metric") == "accuracy")["n_seeds"] == 2).all()


def test_demo_tasks_are_balanced_split_by_image_and_leak_free(demo_run):
    images = pl.read_parquet(demo_run / "results/data/images.parquet")
    assert images["image_id"].n_unique() == images.height
    caption, _ = read_task(demo_run / "results/tasks/caption-tao.parquet")
    counts = caption.group_by("split", "label").len()
    for split in ("train", "eval"):
        per_label = counts.filter(pl.col("split") == split)["len"].to_list()
        assert len(per_label) == 2 and per_label[0] == per_label[1]
    for name in ("caption-tao", "object-nocat", "object-withcat"):
        task, _ = read_task(demo_run / f"results/tasks/{name}.parquet")
        assert task.group_by("image_id").agg(pl.col("split").n_unique())["split"].max() == 1
    withcat, _ = read_task(demo_run / "results/tasks/object-withcat.parquet")
    for text, held_out in withcat.select("text", "held_out").iter_rows():
        assert held_out is None or held_out not in text


def test_demo_figures_and_report(demo_run):
    figures = sorted(p.stem for p in (demo_run / "results/figures").glob("*.svg"))
    assert len(figures) == N_FIGURES and "baselines" in figures
    for figure in figures:
        assert (demo_run / f"results/figures/{figure}.html").stat().st_size > 1000
        assert (demo_run / f"results/figures/{figure}.png").read_bytes()[:4] == b"\x89PNG"
    best = pl.read_csv(demo_run / "results/metrics/best_layers.tsv", separator="\t")
    assert best.select("model", "task", "prompt", "pooling", "probe").is_duplicated().sum() == 0
    assert (best["ci_low"] <= best["value"]).all()
    tokens = pl.read_parquet(demo_run / "results/first_tokens/tiny-llava.parquet")
    assert set(tokens["prompt"]) == {"nocat", "withcat"} and tokens["rank"].max() <= 10
    config = str(demo_run / "config.yaml")
    snakemake(demo_run, "--configfile", config, "--report", "results/report.html")
    report = (demo_run / "results/report.html").read_text(errors="replace")
    assert "caption_accuracy" in report and "object_f1" in report


def test_demo_rerun_does_nothing(demo_run):
    result = snakemake(demo_run, "-n", "--configfile", str(demo_run / "config.yaml"))
    assert "Nothing to be done" in result.stdout + result.stderr


TINY_IDEFICS3 = {
    "family": "idefics3",
    "dtype": "float32",
    "batch_size": 8,
    "num_layers": 4,
    "tiny": {"hidden_size": 64, "seed": 0},
}
N_FIGURES = 8  # every registered figure: the demo has control probes and baselines
DOWNSTREAM = {"summary": 1, "best_layers": 1, "figure": N_FIGURES, "all": 1}
# the demo run probes 4 models (tiny-qwen2-vl, its 2 baselines, tiny-llava) on 3 tasks, with
# 1 pooling, 1 part and 1 layer-shard each, plus the text-embedding baseline on the caption task
EVERYTHING_AFTER_SAMPLING = {
    "images_table": 1,
    "caption_pairs": 1,
    "negative_examples": 1,
    "negative_similarity": 1,
    "object_rows": 1,
    "caption_task": 1,
    "object_task": 2,
    "image_passes": 4,
    "extract": 12,
    "text_embedding": 1,
    "first_tokens": 2,
    "probe": 13,
    **DOWNSTREAM,
}

DEMO_NOCAT = demo_config()["object"]["prompts"]["nocat"]
# a model's extraction settings and its image pass (1 part), for 1 and for the demo's 4 models
EXTRACTION_OF_1 = {"extraction_settings": 1, "image_passes": 1}
EXTRACTION_OF_4 = {"extraction_settings": 4, "image_passes": 4}
# config edit -> exactly the jobs it must rerun
RERUNS = {
    "probe hyperparameter": (
        {"probes.linear.lr": 0.01},
        {"probe": 13, **DOWNSTREAM},
    ),
    "added model": (
        {"models.tiny-idefics3": TINY_IDEFICS3},
        {"tiny_model": 1, "first_tokens": 1, "extract": 3, "probe": 3}
        | EXTRACTION_OF_1
        | DOWNSTREAM,
    ),
    "added pooling (pooled during extraction)": (
        {"extract.poolings": ["mean", "max"]},
        {**EXTRACTION_OF_4, "extract": 12, "probe": 24, **DOWNSTREAM},
    ),
    "prompt variant text": (
        {"object.prompts.withcat.template": "Objects in this picture: {categories}"},
        {"object_task": 1, "extract": 4, "probe": 4, "first_tokens": 2, **DOWNSTREAM},
    ),
    # the new variant's tables pool its prompts alone (tests/test_extract.py: the image passes
    # are not rerun and no other variant's tables are touched)
    "added prompt variant": (
        {"object.prompts.question": {"template": "What is in this image?", "categories": "none"}},
        {"object_task": 1, "extract": 4, "probe": 4, "first_tokens": 2, **DOWNSTREAM},
    ),
    "removed prompt variant": (
        {"object.prompts": {"nocat": DEMO_NOCAT}},
        {"first_tokens": 2, **DOWNSTREAM},
    ),
    "sampling seed": (
        {"coco.seed": 1},
        EVERYTHING_AFTER_SAMPLING,
    ),
    "image counts": (
        {"coco.n_eval_images": 6},
        EVERYTHING_AFTER_SAMPLING,
    ),
    "figure styling": (
        {"figures.width": 400},
        {"figure": N_FIGURES, "negative_similarity": 1, "all": 1},
    ),
    "evaluation setting": (
        {"evaluation.bootstrap": 200},
        {"probe": 13, **DOWNSTREAM},
    ),
    # the demo writes out every evaluation default; leaving them out, or writing out a probe's
    # kind, says the same thing
    "evaluation defaults left out": ({"evaluation": {}}, {}),
    "probe kind written out": ({"probes.linear.kind": "linear"}, {}),
    # images reach the processor smaller: every image-model job, not the text embedding
    "image size": (
        {"images.max_side": 40},
        {**EXTRACTION_OF_4, "extract": 12, "probe": 12, "first_tokens": 2, **DOWNSTREAM},
    ),
    # how a model runs, not what it computes
    "model batch size": ({"models.tiny-qwen2-vl.batch_size": 2}, {}),
    "execution-only settings": (
        {
            "models.tiny-qwen2-vl.batch_size": 3,
            "models.tiny-llava.batch_size": 3,
            "extract.chunk_samples": 17,
            "extract.retries": 1,
            "coco.download_workers": 3,
        },
        {},
    ),
    # the demo's models state their dtype: the device decides only where they run
    "device of models with an explicit dtype": ({"extract.device": "auto"}, {}),
    "storage dtype": (
        {"extract.storage_dtype": "float32"},
        {**EXTRACTION_OF_4, "extract": 12, "probe": 12, **DOWNSTREAM},
    ),
    # the baseline's own jobs, not tiny-llava's extraction, first tokens or probes
    "added baseline": (
        {"models.tiny-llava.baselines": ["random_init"]},
        {**EXTRACTION_OF_1, "extract": 3, "probe": 3, **DOWNSTREAM},
    ),
}


@pytest.mark.parametrize("edit", list(RERUNS))
def test_config_edit_reruns_exactly_the_affected_jobs(demo_run, tmp_path, edit):
    overrides, expected = RERUNS[edit]
    config = demo_config(**{**DEMO_RUN, **overrides})
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(demo_run, "-n", "--configfile", str(path))
    assert planned_jobs(result) == expected


def copy_of_run(run: Path, workdir: Path, *removed: str) -> Path:
    """A finished run copied with its metadata and timestamps, ``removed`` outputs deleted:
    Snakemake plans exactly their jobs again."""
    shutil.copytree(run, workdir, symlinks=True)
    for output in removed:
        path = workdir / output
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return workdir


def assert_same_shards(actual: Path, expected: Path, exact: bool = True) -> None:
    shards = sorted(expected.glob("layers-*.parquet"))
    assert shards and sorted(p.name for p in actual.glob("layers-*.parquet")) == [
        p.name for p in shards
    ]
    for shard in shards:
        # not exact: float rounding apart, which float16 storage turns into one step of its
        # 10-bit mantissa where a value lies near a rounding boundary
        tolerance = {} if exact else {"rel_tol": 2**-10, "abs_tol": 1e-5}
        assert_frame_equal(
            pl.read_parquet(actual / shard.name),
            pl.read_parquet(shard),
            check_exact=exact,
            **tolerance,
        )


# two extraction jobs of the demo, run side by side by the tests below, and their image passes
EXTRACTIONS = [
    "results/activations/tiny-qwen2-vl/object-withcat/part-0",
    "results/activations/tiny-llava/object-withcat/part-0",
]
PASSES = [
    "results/activations/tiny-qwen2-vl/passes/part-0.json",
    "results/activations/tiny-llava/passes/part-0.json",
]


def test_killed_run_resumes_from_finished_chunks_and_matches(demo_run, tmp_path):
    """SIGKILL to the whole process group during two image passes (every task of a model at
    once), then the same command again: they resume from their chunks, and every task's
    tables are what the uninterrupted run wrote."""
    models = {Path(output).parts[2] for output in EXTRACTIONS}
    tables = [
        str(path.relative_to(demo_run))
        for model in models
        for path in (demo_run / "results/activations" / model).glob("*-*/part-0")
    ]
    workdir = copy_of_run(demo_run, tmp_path / "run", *tables, *PASSES)
    command = [*SNAKEMAKE, "--directory", str(workdir), *EXTRACTIONS]
    command += ["--cores", "2", "--configfile", "config.yaml"]
    chunks = "results/activations/*/passes/*.chunks/*/*.done"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole below
            env=run_env(),
        )
        deadline = time.monotonic() + 300
        while not list(workdir.glob(chunks)):
            assert run.poll() is None, "the run ended before any chunk was finished"
            assert time.monotonic() < deadline, "no extraction chunk finished in time"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finished = {p.relative_to(workdir) for p in workdir.glob(chunks)}
    snakemake(workdir, "--unlock", "--configfile", "config.yaml")
    snakemake(workdir, *command[command.index(EXTRACTIONS[0]) :])
    resumed = [
        line
        for log in (workdir / "logs/extract").rglob("*.log")
        for line in log.read_text().splitlines()
        if "resuming:" in line
    ]
    assert resumed, f"no image pass resumed from {sorted(map(str, finished))}"
    assert not list(workdir.glob("results/activations/*/passes/*.chunks"))
    for output in EXTRACTIONS:
        assert_same_shards(workdir / output, demo_run / output)
    # the other tasks' tables were pooled in the same passes, and wait staged
    for table in set(tables) - set(EXTRACTIONS):
        model, task = Path(table).parts[2:4]
        staged = workdir / f"results/activations/{model}/passes/part-0/{task}"
        assert_same_shards(staged, demo_run / table)


# Loaded by every Python process of the run (PYTHONPATH); acts in extraction jobs only. A batch
# larger than VLPROBE_TEST_MAX_BATCH kills the job as the kernel's out-of-memory killer would:
# no Python exception, so only Snakemake's retry (with the attempt-halved batch size) recovers.
OOM_KILLER = """
import os, signal, sys

if sys.argv and sys.argv[0].endswith(".extract.py"):
    from vlprobe import extract

    pool = extract.Extractor.pool

    def pool_or_die(self, paths, texts):
        if self.batch_size > int(os.environ["VLPROBE_TEST_MAX_BATCH"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return pool(self, paths, texts)

    extract.Extractor.pool = pool_or_die
"""


def test_killed_extraction_is_retried_with_half_the_batch_size(demo_run, tmp_path):
    workdir = copy_of_run(demo_run, tmp_path / "run", EXTRACTIONS[0], PASSES[0])
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(OOM_KILLER)
    batch_size = demo_config()["models"]["tiny-qwen2-vl"]["batch_size"]
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
        "VLPROBE_TEST_MAX_BATCH": str(batch_size // 2),
    }
    result = snakemake(
        workdir, EXTRACTIONS[0], "--cores", "2", "--configfile", "config.yaml", env=env
    )
    assert "Trying to restart job" in result.stdout + result.stderr
    log = (workdir / "logs/extract/tiny-qwen2-vl/passes/part-0.log").read_text()
    assert f"batch size {batch_size // 2} instead of the entry's {batch_size}" in log
    # another batch size pads the batches differently: equal up to float rounding
    assert_same_shards(workdir / EXTRACTIONS[0], demo_run / EXTRACTIONS[0], exact=False)
