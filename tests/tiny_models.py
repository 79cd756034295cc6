"""The tiny models of the model and extraction tests: one per family, and Apple's remote-code
FastVLM layout (:data:`APPLE`), with their config entries."""

import importlib.util
import os
from pathlib import Path

import pytest
from apple_fastvlm import APPLE, APPLE_ENTRY, build_apple_fastvlm

from vlprobe.models import FAMILIES, build_tiny_model

NUM_LAYERS = 3
FAMILIES_AND_LAYOUTS = [*FAMILIES, APPLE]


def requires(family: str) -> tuple[str, ...]:
    return FAMILIES[family].requires if family in FAMILIES else ()


def available(family: str) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in requires(family))


# VLPROBE_TINY_FAMILIES=llava,qwen3_vl: build (and test) only these (a CI shard, or while
# working on one family); the others' tests are skipped
ONLY = [f for f in os.environ.get("VLPROBE_TINY_FAMILIES", "").split(",") if f]


def selected(family: str) -> bool:
    return not ONLY or family in ONLY


BUILT = [family for family in FAMILIES_AND_LAYOUTS if available(family) and selected(family)]
FAMILY_PARAMS = [
    pytest.param(
        family,
        marks=[
            pytest.mark.skipif(
                not available(family), reason=f"{family} needs {', '.join(requires(family))}"
            ),
            pytest.mark.skipif(not selected(family), reason="not in VLPROBE_TINY_FAMILIES"),
        ],
    )
    for family in FAMILIES_AND_LAYOUTS
]


def entry(path: Path, family: str, num_layers: int = NUM_LAYERS) -> dict:
    """A config entry; ``family`` may be :data:`APPLE`."""
    layout = APPLE_ENTRY if family == APPLE else {"family": family}
    return {**layout, "hf_id": str(path), "dtype": "float32", "num_layers": num_layers}


def build_tiny_models(root: Path) -> dict[str, Path]:
    """Every available family's tiny model (and Apple's layout), seeded, under ``root``."""
    for family in BUILT:
        if family == APPLE:
            build_apple_fastvlm(root / family, NUM_LAYERS)
        else:
            build_tiny_model(family, root / family, {"num_layers": NUM_LAYERS, "seed": 0})
    return {family: root / family for family in BUILT}
