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


def image_ends_text(loaded) -> bool:
    """Whether an empty prompt leaves the image's tokens at the end of the text (Phi-4's image
    block, a bare placeholder without a chat template): no suffix can then be cut after them,
    so such an image takes the plain path."""
    from helpers import drawing

    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], [""])
    return bool(loaded.image_bound_mask(inputs)[0][-1])


def layer_inputs(loaded, inputs, hidden_states):
    """The hidden states that the decoder layers read, from ``output_hidden_states``: the same,
    except in a deepstack decoder (Qwen3-VL, Granite-Docling, Granite 4 Vision), whose layers'
    outputs get the vision tower's features added at the image tokens before the next layer
    reads them (transformers reports them before the addition; vlprobe's hooks see them after).
    The features come from the model's get_image_features, given the inputs it names."""
    import inspect

    import torch

    from vlprobe.models.base import decoder_of

    if type(loaded.model).__name__ == "Granite4VisionForConditionalGeneration":
        return granite4_vision_layer_inputs(loaded, inputs, hidden_states)
    if not hasattr(decoder_of(loaded.model), "_deepstack_process"):
        return hidden_states
    get_image_features = loaded.model.model.get_image_features
    names = inspect.signature(get_image_features).parameters
    image = get_image_features(
        **{name: value for name, value in inputs.items() if name in names}, return_dict=True
    )
    mask = loaded.image_token_mask(inputs)
    states = list(hidden_states)
    for level, features in enumerate(image.deepstack_features):
        state = states[level + 1].clone()
        state[mask] = state[mask] + torch.cat(features).to(state.dtype)
        states[level + 1] = state
    return tuple(states)


def granite4_vision_layer_inputs(loaded, inputs, hidden_states):
    """Granite 4 Vision adds each (decoder layer, features) pair of its image features to the
    image tokens before that layer; transformers' state 0 is layer 0's input, injection
    included, the others are the previous layer's outputs, without it."""
    import torch

    image = loaded.model.model.get_image_features(
        inputs["pixel_values"], inputs["image_sizes"], return_dict=True
    )
    mask = loaded.image_token_mask(inputs)
    states = list(hidden_states)
    for layer, features in image.deepstack_features:
        if layer == 0:
            continue
        state = states[layer].clone()
        state[mask] = state[mask] + torch.cat(features).to(state.dtype)
        states[layer] = state
    return tuple(states)
