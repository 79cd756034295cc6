"""A tiny checkpoint laid out like Apple's own FastVLM ones (``apple/FastVLM-*``): remote code
(``llava_qwen.py``, named in config.json's ``auto_map``), model_type ``llava_qwen2``, a Qwen2
tokenizer without an image token, and no processor files."""

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers.utils import ModelOutput

from vlprobe.models.base import CHAT_TEMPLATES, LoadedVLM, text_config_kwargs
from vlprobe.models.fast_vlm import FastVlmAdapter
from vlprobe.models.tiny import SpecialTokens, build_tokenizer

# the layout's name among the tests' families (and its directory's), and its config entry's keys
APPLE = "apple_fastvlm"
APPLE_ENTRY = {"family": "fast_vlm", "trust_remote_code": True}
REMOTE_CODE = Path(__file__).with_name("remote_code") / "llava_qwen.py"
AUTO_MAP = {
    "AutoConfig": "llava_qwen.LlavaConfig",
    "AutoModelForCausalLM": "llava_qwen.LlavaQwen2ForCausalLM",
}
# Qwen2's special tokens; "<image>" is not among them
SPECIAL_TOKENS = SpecialTokens(eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>",))
# the Qwen2 tokenizer's text-only chat template, which Apple's tokenizer carries (see the
# chat_templates README for how far that is verified)
CHAT_TEMPLATE = CHAT_TEMPLATES / "qwen2.jinja"
IMAGE_SIZE = 64  # the tower's resolution, as its name says ("..._64")
DOWNSAMPLING = 16  # 16 x 16 pixels per image token: 16 tokens


def build_apple_fastvlm(out_dir: Path, num_layers: int, seed: int = 0) -> Path:
    from remote_code.llava_qwen import LlavaConfig, LlavaQwen2ForCausalLM

    spec = FastVlmAdapter.tiny_spec({"num_layers": num_layers, "seed": seed})
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(SPECIAL_TOKENS, spec["vocab_size"])
    tokenizer.chat_template = CHAT_TEMPLATE.read_text()
    model_config = LlavaConfig(
        **text_config_kwargs(tokenizer, spec),
        mm_vision_tower=f"conv_{IMAGE_SIZE}",
        mm_hidden_size=spec["vision_hidden_size"],
        downsampling=DOWNSAMPLING,
    )
    LlavaQwen2ForCausalLM(model_config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.copy(REMOTE_CODE, out_dir / REMOTE_CODE.name)
    config_file = out_dir / "config.json"
    config = {**json.loads(config_file.read_text()), "auto_map": AUTO_MAP}
    config_file.write_text(json.dumps(config))
    return out_dir


def apple_forward(loaded: LoadedVLM, inputs: Mapping[str, torch.Tensor], **kwargs) -> ModelOutput:
    """Apple's own forward pass on the adapter's inputs (one image per row, no padding): the
    image's placeholders replaced by the one token id -200 that Apple's code expects."""
    rows = []
    for ids in inputs["input_ids"].tolist():
        first = ids.index(loaded.image_token_id)
        rows.append(ids[:first] + [-200] + ids[first + ids.count(loaded.image_token_id) :])
    return loaded.model(input_ids=torch.tensor(rows), images=inputs["pixel_values"], **kwargs)
