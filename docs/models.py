"""Write docs/models.md, the support table, from a run of the family tests.

    python docs/models.py                   # runs the tests (about 10 minutes), writes the table
    python docs/models.py --junit run.xml   # from a finished run: pytest ... --junitxml=run.xml

Every image-text-to-text model type of the installed transformers gets a row: the vlprobe family
that serves it and which of the offline tiny-model checks passed in the run, or why vlprobe
cannot probe it (vlprobe.models.support), or that no family class exists yet (``family: auto``
then tries the generic adapter, untested). Rerun it whenever transformers is upgraded in the lock.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from vlprobe.models import FAMILIES, FAMILY_OF_MODEL_TYPE
from vlprobe.models.support import NOT_IN_TRANSFORMERS, UNSUPPORTED

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_models.py", "tests/test_extract.py"]
# column -> the test functions (per family) that make it; a check passes if all its runs pass
CHECKS = {
    "loads": ["test_tiny_model_loads_back_as_the_real_class"],
    "placeholder": ["test_image_placeholder_comes_before_the_text"],
    "image matters": ["test_the_image_changes_the_activations"],
    "hooks = hidden states (left, right padding)": [
        "test_hooks_pool_what_the_forward_pass_returns"
    ],
    "plain path": ["test_plain_path_equals_the_full_forward"],
    "prefix split": ["test_prefix_and_suffix_are_the_processors_tokens"],
    "prefix reuse = full forward": [
        "test_prefix_reuse_equals_the_full_forward",
        "test_prompts_sharing_a_run_of_tokens_pass_it_once",
        "test_one_pass_over_every_task_equals_each_task_alone",
    ],
    "no all-layer states": ["test_no_decoder_returns_the_hidden_states_of_all_layers"],
    "chat format": [
        "test_chat_format_tokens_are_the_processors_own",
        "test_chat_format_prefix_reuse_equals_the_full_forward",
    ],
}
# test parameters that are layouts rather than families: Apple's remote-code FastVLM
LAYOUTS = {"apple_fastvlm": "llava_qwen2"}  # test parameter -> model_type
# Tao et al.'s models in remote code only (their own rows, besides NOT_IN_TRANSFORMERS). Qwen-VL's
# reason was found by loading the published Qwen-VL-Chat remote code (modeling_qwen.py, visual.py,
# tokenization_qwen.py with tiktoken) on a tiny random checkpoint on transformers 5.23
REMOTE_ONLY = {
    "Qwen-VL (Qwen/Qwen-VL, Qwen/Qwen-VL-Chat, remote code, model_type qwen)": (
        "its remote code, written for transformers 4.32, does not run on transformers 5 "
        "(tried with the published code on a tiny checkpoint): (1) loading stops in "
        "transformers' check of the code's imports: modeling_qwen.py imports "
        "transformers_stream_generator (in chat_stream), which is missing or, installed, fails "
        "to import, its main.py importing DisjunctiveConstraint and BeamSearchScorer, removed "
        "in transformers 5; (2) transformers 5 builds the model on the meta device, so the "
        "tensors the code keeps as plain attributes (RotaryEmbedding.inv_freq, "
        "QWenAttention.logn_tensor) hold no data and QWenModel.forward fails at the rotary "
        "embedding (Cannot copy out of meta tensor); (3) QWenModel.forward calls "
        "self.get_head_mask, which transformers 5 removed; (4) silently, every layer's "
        "attn.c_proj.weight is redrawn at random after the checkpoint loads: QWenAttention "
        "holds a non-persistent buffer (masked_bias) that is not in the checkpoint, so "
        "transformers 5 initialises that module again, and the code's _init_weights writes "
        "with p.data.normal_, past transformers 5's guard of loaded weights. With all four "
        "patched from outside, the forward pass runs, but its own cache cannot continue a prefix "
        "by more than one token, on any transformers (QWenModel.forward reads the past length from "
        "the heads axis of its [batch, seq, heads, dim] keys, so the attention mask has the wrong "
        "width), its tokenizer has no pad token, and it reads each image from a file path "
        "written in the text (<img>path</img>). Supporting it would mean patching the remote "
        "code's internals in four places, so it is not supported"
    ),
}


def run_tests(junit: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *TESTS,
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            junit,
        ],
        cwd=ROOT,
        check=False,
    )


def results(junit: Path) -> dict[str, dict[str, list[str]]]:
    """Per family, per test function, the outcomes of its runs (passed/failed/skipped)."""
    outcomes: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case in ET.parse(junit).getroot().iter("testcase"):
        match = re.fullmatch(r"(\w+)\[(.+)\]", case.get("name", ""))
        if match is None:
            continue
        function, params = match.groups()
        family = next((p for p in params.split("-") if p in FAMILIES or p in LAYOUTS), None)
        if family is None:
            continue
        kind = next((child.tag for child in case), "passed")
        outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}.get(kind, kind)
        outcomes[family][function].append(outcome)
    return outcomes


def check_cell(runs: dict[str, list[str]], functions: list[str]) -> str:
    seen = [outcome for function in functions for outcome in runs.get(function, [])]
    if not seen:
        return "–"
    if "failed" in seen:
        return "FAIL"
    return "skip" if "passed" not in seen else "pass"


def family_row(label: str, family: str, status: str, outcomes: dict) -> tuple[str, bool]:
    cells = [check_cell(outcomes.get(family, {}), f) for f in CHECKS.values()]
    ok = all(c in ("pass", "–") for c in cells) and "pass" in cells
    status += "" if ok else " (checks not all passing)"
    return f"| {label} | {status} | " + " | ".join(cells) + " |", ok


def table(outcomes: dict[str, dict[str, list[str]]]) -> tuple[str, str, int, int]:
    """The rows of transformers' image-text-to-text types, the rows of the families and layouts
    outside that mapping, how many families pass and over how many model types."""
    header = ["model type", "vlprobe", *CHECKS]
    head = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines, extra = list(head), list(head)
    passed: dict[str, list[bool]] = defaultdict(list)  # family -> whether each of its types passed
    for model_type in sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES):
        family = FAMILY_OF_MODEL_TYPE.get(model_type)
        if family is not None:
            row, ok = family_row(f"`{model_type}`", family, f"`family: {family}`", outcomes)
            passed[family].append(ok)
            lines.append(row)
        elif model_type in UNSUPPORTED:
            reason = UNSUPPORTED[model_type]
            lines.append(f"| `{model_type}` | no: {reason} |" + " |" * len(CHECKS))
        else:
            lines.append(
                f"| `{model_type}` | untested: no family class yet; `family: auto` tries the "
                "generic adapter |" + " |" * len(CHECKS)
            )
    for model_type, family in sorted(FAMILY_OF_MODEL_TYPE.items()):
        if model_type not in (*MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, *LAYOUTS.values()):
            row, ok = family_row(f"`{model_type}`", family, f"`family: {family}`", outcomes)
            passed[family].append(ok)
            extra.append(row)
    for layout, model_type in LAYOUTS.items():
        label = f"`{model_type}` (remote code)"
        status = f"`family: {FAMILY_OF_MODEL_TYPE[model_type]}`, `trust_remote_code: true`"
        extra.append(family_row(label, layout, status, outcomes)[0])
    passing = [family for family, types in passed.items() if all(types)]
    passing_types = sum(len(passed[family]) for family in passing)
    return "\n".join(lines), "\n".join(extra), len(passing), passing_types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--junit", type=Path, help="a finished run's JUnit XML (else: run the tests)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "models.md")
    args = parser.parse_args()
    junit = args.junit
    if junit is None:
        junit = Path(tempfile.mkdtemp()) / "run.xml"
        run_tests(junit)
    outcomes = results(junit)
    rows, extra, passing, passing_types = table(outcomes)
    types = len(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    others = "\n".join(
        f"| {name} | no: {reason} |"
        for name, reason in {**REMOTE_ONLY, **NOT_IN_TRANSFORMERS}.items()
    )
    args.out.write_text(
        f"""# Supported models

Generated by `python docs/models.py` from a run of `pytest {" ".join(TESTS)}` on the installed
transformers {transformers.__version__}; do not edit by hand. Rerun it when transformers is
upgraded in the lock.

{passing} families, serving {passing_types} model types, pass every check that applies to
them, on tiny randomly initialised models of the real classes (built offline;
`tests/tiny_models.py`). The {types} rows are every model type of transformers'
image-text-to-text mapping. A check reads `pass` when every run of it passed,
`skip` when it was skipped (a package missing, or the family not selected), `–` when it does
not apply (chat format: the tiny model carries no checkpoint chat template). Checks:

- **loads**: the tiny checkpoint loads back as the real model and processor classes, with the
  decoder's layers and final norm found; the last hidden state is the final norm's output.
- **placeholder**: the image placeholder comes before the prompt and expands into image tokens.
- **image matters**: two images give different outputs for the same prompt.
- **hooks = hidden states**: every pooling computed in the layer hooks equals the pooling of
  `output_hidden_states` (for Qwen3-VL: with its deepstack features added, see config/README),
  under left and right padding.
- **plain path**: batched extraction equals each sample alone in the full forward pass.
- **prefix split**: prefix and suffixes are exactly the processor's tokens, the image in the
  prefix (a prefix-LM: no split at all).
- **prefix reuse = full forward**: every pooling of the image-prefix reuse path equals the full
  forward's: prompts on their image's prefix, prompts that share a run of tokens after it, and
  one image pass over several tasks (a prefix-LM: every image takes the plain path, checked).
- **no all-layer states**: neither the model nor its decoder returns all layers' token states.
- **chat format**: the chat-format tokens are the processor's own `apply_chat_template`'s, and
  prefix reuse in chat format equals the full forward.

A named family must be registered; `family: auto` takes the family of the checkpoint's
model_type. A checkpoint of an unsupported type fails before any weights load, naming the model,
its model_type and the reason below.

{rows}

## Families and layouts outside transformers' image-text-to-text mapping

Loaded through the causal-LM class (Phi-4-multimodal), or remote code with a stand-in test
(Apple's FastVLM: `tests/apple_fastvlm.py`).

{extra}

## Models not in transformers

| model | vlprobe |
|---|---|
{others}
"""
    )
    print(
        f"wrote {args.out}: {passing} families ({passing_types} model types) passing; {types} rows"
    )


if __name__ == "__main__":
    main()
