"""One model's extraction of one part of the images, for every task and prompt variant at once.

Why: the expensive part of a forward pass is the image: the vision tower and the decoder over
the image block (Qwen2-VL-2B on a COCO image: about 2.5 and 1.0 TFLOP, against a few hundredths
for a prompt's own tokens). Every task and prompt variant shows the model the same images (the
parts split the study's images, the same in every task), so one job pools the prompts of all
variants together: the prompts of an image, whatever their variant, share one vision pass and
one image-prefix pass (see :mod:`vlprobe.extract`).

How the daily loop stays exact. The workflow keeps one output per (model, task, part), the
activation tables the probes read, so adding a variant must not touch the others' tables: their
probes would rerun. Snakemake reruns every job downstream of a job it reruns, so the job that
pools all variants must not be upstream of their tables in the usual way. Hence three jobs:

- the *settings* of a model's extraction (its entry, poolings, shards, image size, storage
  dtype), written by a job of their own that every extraction job reads: an edit of any of
  them reruns the image pass and every table after it;
- the *image pass* of (model, part) (:meth:`ExtractionJob.run_passes`) pools the prompts of
  every variant, and stages each variant's tables in ``<staging>/<task>/``, beside its
  declared output, a small summary (Snakemake deletes a job's declared outputs before it runs
  it, so the staged tables, like the resumable chunks in ``<staging>.chunks/``, live where no
  job declares them). Which variants there are it reads from the config, and their labels from
  the label tables, inputs whose age does not count: adding, editing or removing a variant does
  not rerun it;
- the *tables* of (model, task, part) (:meth:`ExtractionJob.publish`) move the staged tables
  into place with one rename; they read the pass's summary as an input whose age does not
  count, so a rerun of the pass alone republishes nothing. Where nothing is staged with the
  task's fingerprint (a variant added or edited since the pass ran, or a label table remade)
  it pools its own prompts, alone: adding a variant computes that variant only, and no
  finished variant is recomputed or rewritten.

Each task's tables carry a fingerprint of everything that determines their values (the model
entry and its checkpoint files, the task's samples and image files, poolings, shards, image
size, storage dtype). A pass whose variant's published tables carry its fingerprint links them
into staging instead of computing them again (it reruns all its tables' jobs). The values of a
task pooled with others equal those of the task alone within float tolerance (batches pad
differently); families without prefix reuse take the plain path, as alone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from vlprobe.baselines import load_blank_image
from vlprobe.data import load_image
from vlprobe.extract.chunks import (
    CHUNK_SAMPLES,
    checkpoint_files,
    chunk_dir_of,
    samples_fingerprint,
)
from vlprobe.extract.extractor import Variant, extract_variants
from vlprobe.models import LoadedVLM, load_model
from vlprobe.storage import read_metadata, shard_path, write_text

log = logging.getLogger(__name__)

FINGERPRINT_FORMAT = 1  # bump when what the tables hold changes meaning


@dataclass(frozen=True)
class TaskPart:
    """One task's samples (sample_id, image_path, text) in one part, and the task's metadata."""

    task: str
    samples: pl.DataFrame
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ExtractionJob:
    """What one model's extraction jobs share: the model entry and how values are pooled and
    stored; ``device``, ``threads``, ``batch_size`` and ``chunk_samples`` say how they run."""

    model_name: str
    model_entry: Mapping[str, Any]
    poolings: Sequence[str]
    shards: Sequence[Sequence[int]]
    max_side: int | None = None
    storage_dtype: str = "float32"
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto
    threads: int = 1
    batch_size: int | None = None  # None: the entry's
    chunk_samples: int = CHUNK_SAMPLES
    on_chunk: Callable[[int, int], None] | None = None  # see extract_variants

    def fingerprint(self, part: TaskPart) -> str:
        """A hash of everything that determines a task part's tables (not how they were run)."""
        header = {
            "format": FINGERPRINT_FORMAT,
            "model": self.model_name,
            "entry": {k: v for k, v in self.model_entry.items() if k != "batch_size"},
            "checkpoint": checkpoint_files(str(self.model_entry["hf_id"])),
            "task": part.task,
            "metadata": dict(part.metadata),
            "poolings": list(self.poolings),
            "shards": [list(shard) for shard in self.shards],
            "max_side": self.max_side,
            "storage_dtype": self.storage_dtype,
        }
        return samples_fingerprint(header, part.samples)

    def holds(self, directory: str | os.PathLike, fingerprint: str) -> bool:
        """Whether ``directory`` holds every layer-shard of a task part with its
        ``fingerprint``."""
        paths = [shard_path(directory, shard) for shard in self.shards]
        if not all(path.is_file() for path in paths):
            return False
        try:
            return all(read_metadata(path).get("fingerprint") == fingerprint for path in paths)
        except ValueError:  # damaged or foreign: not what the part needs
            return False

    def run_passes(
        self,
        parts: Sequence[TaskPart],
        staging: str | os.PathLike,
        published: Callable[[str], str | os.PathLike],
    ) -> dict[str, str]:
        """The image pass: stage every task part's tables in ``<staging>/<task>/``, pooling
        all parts that need it together. A part whose published tables (``published(task)``,
        its output directory) are current is staged by hard links to them, and one already
        staged is kept. Returns per task what was done: computed, linked or staged."""
        staging = Path(staging)
        fingerprints = {part.task: self.fingerprint(part) for part in parts}
        status: dict[str, str] = {}
        todo = []
        for part in parts:
            if self.holds(staging / part.task, fingerprints[part.task]):
                status[part.task] = "staged"
            elif self.holds(published(part.task), fingerprints[part.task]):
                status[part.task] = "linked"
            else:
                todo.append(part)
        if staging.is_dir():  # tables of tasks since edited or removed, half-written ones
            for stale in staging.iterdir():
                if status.get(stale.name) != "staged":
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        for task, done in status.items():
            if done == "linked":
                _link_tree(Path(published(task)), staging / task)
        if not todo:
            log.info("%s: every task's tables are current: nothing to compute", self.model_name)
            return status
        log.info(
            "%s: one pass for %d tasks (%s); %d more current",
            self.model_name,
            len(todo),
            ", ".join(part.task for part in todo),
            len(status),
        )
        model = self._load()
        variants = [
            Variant(
                part.samples,
                [shard_path(staging / f".{part.task}.tmp", shard) for shard in self.shards],
                self._metadata(model, part, fingerprints[part.task]),
            )
            for part in todo
        ]
        self._extract(model, variants, chunk_dir=staging.with_name(staging.name + ".chunks"))
        for part, variant in zip(todo, variants, strict=True):
            os.replace(Path(variant.out_paths[0]).parent, staging / part.task)
            status[part.task] = "computed"
        return status

    def publish(
        self, part: TaskPart, staging: str | os.PathLike, out_dir: str | os.PathLike
    ) -> str:
        """Move the part's staged tables to ``out_dir`` (one rename); where none are staged
        with its fingerprint, pool the part alone into ``out_dir``. Returns which it did."""
        staged, out_dir = Path(staging) / part.task, Path(out_dir)
        fingerprint = self.fingerprint(part)
        if self.holds(staged, fingerprint):
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, out_dir)
            log.info(
                "%s: %s: the image pass's tables moved into %s", self.model_name, part.task, out_dir
            )
            return "published"
        log.warning(
            "%s: no tables of %s staged by the image pass (its output was removed after the "
            "pass ran): pooling its prompts alone",
            self.model_name,
            part.task,
        )
        self.extract_alone(part, out_dir, fingerprint)
        return "computed"

    def extract_alone(
        self, part: TaskPart, out_dir: str | os.PathLike, fingerprint: str | None = None
    ) -> None:
        """Pool one task part by itself into ``out_dir`` (its chunks kept beside it);
        ``fingerprint``: the part's, if computed already."""
        fingerprint = fingerprint or self.fingerprint(part)
        model = self._load()
        paths = [shard_path(out_dir, shard) for shard in self.shards]
        self._extract(
            model,
            [Variant(part.samples, paths, self._metadata(model, part, fingerprint))],
            chunk_dir_of(out_dir),
        )

    def _load(self) -> LoadedVLM:
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(self.device).type == "cpu":
            torch.set_num_threads(self.threads)
        entry_batch = self.model_entry["batch_size"]
        if self.batch_size is not None and self.batch_size != entry_batch:
            log.warning(
                "%s: batch size %d instead of the entry's %d (retry after a failed attempt)",
                self.model_name,
                self.batch_size,
                entry_batch,
            )
        return load_model(self.model_name, self.model_entry, device=self.device)

    def _metadata(self, model: LoadedVLM, part: TaskPart, fingerprint: str) -> dict[str, Any]:
        entry = self.model_entry
        return {
            "model": self.model_name,
            "family": entry["family"],
            "hf_id": str(entry["hf_id"]),
            "revision": entry.get("revision"),
            "dtype": str(model.model.dtype).removeprefix("torch."),  # "auto" resolved
            "max_side": self.max_side,
            "task": part.task,
            **part.metadata,
            "fingerprint": fingerprint,
        }

    def _extract(
        self, model: LoadedVLM, variants: Sequence[Variant], chunk_dir: str | os.PathLike
    ) -> None:
        blank = self.model_entry.get("baseline") == "blank_image"
        extract_variants(
            model,
            variants,
            self.poolings,
            self.shards,
            self.batch_size or self.model_entry["batch_size"],
            chunk_dir=chunk_dir,
            resume_key={"entry": dict(self.model_entry), "device": self.device},
            load=functools.partial(
                load_blank_image if blank else load_image, max_side=self.max_side
            ),
            storage_dtype=self.storage_dtype,
            chunk_samples=self.chunk_samples,
            on_chunk=self.on_chunk,
        )


def _link_tree(source: Path, target: Path) -> None:
    """``target`` made a directory of hard links to ``source``'s files (copies across
    filesystems), complete or absent."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in source.iterdir():
        try:
            os.link(path, tmp / path.name)
        except OSError:
            shutil.copy2(path, tmp / path.name)
    os.replace(tmp, target)


def write_pass_summary(status: Mapping[str, str], path: str | os.PathLike) -> None:
    """The image pass's declared output: what it did per task (a small JSON)."""
    write_text(json.dumps(dict(sorted(status.items())), indent=1) + "\n", path)


def run_extraction(
    model_name: str,
    model_entry: Mapping[str, Any],
    samples: pl.DataFrame,
    poolings: Sequence[str],
    shards: Sequence[Sequence[int]],
    out_dir: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> None:
    """One task's extraction by itself: load the model of a config entry, pool ``samples``,
    write one file per shard into ``out_dir``; ``settings`` are :class:`ExtractionJob`'s
    (device, threads, batch_size, chunk_samples, max_side, storage_dtype, on_chunk). Finished
    chunks are kept in ``<out_dir>.chunks/``, so that a re-run after a kill resumes."""
    metadata = dict(metadata or {})
    part = TaskPart(str(metadata.pop("task", "task")), samples, metadata)
    job = ExtractionJob(model_name, model_entry, poolings, shards, **settings)
    job.extract_alone(part, out_dir)
