"""Model registry and adapters, on tiny randomly initialised models of the real classes."""

import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from apple_fastvlm import APPLE, apple_forward
from helpers import drawing
from PIL import Image
from safetensors.torch import load_file
from tiny_models import FAMILY_PARAMS, NUM_LAYERS, available, entry, image_ends_text, selected

from vlprobe.models import FAMILIES, ModelError, base, build_tiny_model, load_model
from vlprobe.models.base import resolve_dtype, shared_prefix_length

# per family, and for Apple's remote-code FastVLM: the model and processor classes that load
MODEL_CLASSES = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "fast_vlm": ("FastVlmForConditionalGeneration", "LlavaProcessor"),
    "kosmos2": ("Kosmos2ForConditionalGeneration", "Kosmos2Processor"),
    "internvl": ("InternVLForConditionalGeneration", "InternVLProcessor"),
    "phi4_multimodal": ("Phi4MultimodalForCausalLM", "Phi4MultimodalProcessor"),
    "minicpmv4_6": ("MiniCPMV4_6ForConditionalGeneration", "MiniCPMV4_6Processor"),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "mistral3": ("Mistral3ForConditionalGeneration", "PixtralProcessor"),
    "vipllava": ("VipLlavaForConditionalGeneration", "LlavaProcessor"),
    "aya_vision": ("AyaVisionForConditionalGeneration", "AyaVisionProcessor"),
    "perception_lm": ("PerceptionLMForConditionalGeneration", "PerceptionLMProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor"),
    "glm4v": ("Glm4vForConditionalGeneration", "Glm4vProcessor"),
    "glm4v_moe": ("Glm4vMoeForConditionalGeneration", "Glm4vProcessor"),
    "idefics2": ("Idefics2ForConditionalGeneration", "Idefics2Processor"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor"),
    "paligemma": ("PaliGemmaForConditionalGeneration", "PaliGemmaProcessor"),
    "emu3": ("Emu3ForConditionalGeneration", "Emu3Processor"),
    "chameleon": ("ChameleonForConditionalGeneration", "ChameleonProcessor"),
    "lfm2_vl": ("Lfm2VlForConditionalGeneration", "Lfm2VlProcessor"),
    "janus": ("JanusForConditionalGeneration", "JanusProcessor"),
    "molmo2": ("Molmo2ForConditionalGeneration", "Molmo2Processor"),
    "gemma3n": ("Gemma3nForConditionalGeneration", "Gemma3nProcessor"),
    "gemma4": ("Gemma4ForConditionalGeneration", "Gemma4Processor"),
    "llava_next_video": ("LlavaNextVideoForConditionalGeneration", "LlavaNextVideoProcessor"),
    "cohere2_vision": ("Cohere2VisionForConditionalGeneration", "Cohere2VisionProcessor"),
    "deepseek_vl": ("DeepseekVLForConditionalGeneration", "DeepseekVLProcessor"),
    "deepseek_vl_hybrid": ("DeepseekVLHybridForConditionalGeneration", "DeepseekVLHybridProcessor"),
    "ovis2": ("Ovis2ForConditionalGeneration", "Ovis2Processor"),
    "aria": ("AriaForConditionalGeneration", "AriaProcessor"),
    "lfm3_vl": ("Lfm3VlForConditionalGeneration", "Lfm3VlProcessor"),
    "minicpmv4_7": ("MiniCPMV4_7ForConditionalGeneration", "MiniCPMV4_7Processor"),
    "glm46v": ("Glm46VForConditionalGeneration", "Glm46VProcessor"),
    "lighton_ocr": ("LightOnOcrForConditionalGeneration", "LightOnOcrProcessor"),
    "granite4_vision": ("Granite4VisionForConditionalGeneration", "Granite4VisionProcessor"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor"),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", "Qwen3VLProcessor"),
    # the Gemma-3 model inside the checkpoints' ShieldGemma2ForImageClassification
    "shieldgemma2": ("Gemma3ForConditionalGeneration", "ShieldGemma2Processor"),
    "gemma4_unified": ("Gemma4UnifiedForConditionalGeneration", "Gemma4UnifiedProcessor"),
    "video_llava": ("VideoLlavaForConditionalGeneration", "VideoLlavaProcessor"),
    "video_llama_3": ("VideoLlama3ForConditionalGeneration", "VideoLlama3Processor"),
    "qwen2_5_omni_thinker": ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniProcessor"),
    "qwen3_omni_moe_thinker": (
        "Qwen3OmniMoeThinkerForConditionalGeneration",
        "Qwen3OmniMoeProcessor",
    ),
    "mistral4": ("Mistral3ForConditionalGeneration", "PixtralProcessor"),
    "mistral_large4": ("MistralLarge4ForConditionalGeneration", "PixtralProcessor"),
    "kimi_k25": ("Kimi_K25ForConditionalGeneration", "Kimi_K25Processor"),
    "exaone4_5": ("Exaone4_5_ForConditionalGeneration", "Exaone4_5_Processor"),
    "nemotron_h_omni": ("NemotronH_Omni_Reasoning_V3", "NemotronH_Omni_Reasoning_V3Processor"),
    "paddleocr_vl": ("PaddleOCRVLForConditionalGeneration", "PaddleOCRVLProcessor"),
    "hunyuan_vl": ("HunYuanVLForConditionalGeneration", "HunYuanVLProcessor"),
    "ernie4_5_vl_moe": ("Ernie4_5_VLMoeForConditionalGeneration", "Ernie4_5_VLMoeProcessor"),
    "llama4": ("Llama4ForConditionalGeneration", "Llama4Processor"),
    "granite_docling": ("GraniteDoclingForConditionalGeneration", "GraniteDoclingProcessor"),
    "blip_2": ("Blip2ForConditionalGeneration", "Blip2Processor"),
    "instructblip": ("InstructBlipForConditionalGeneration", "InstructBlipProcessor"),
    "glm_ocr": ("GlmOcrForConditionalGeneration", "Glm46VProcessor"),
    "minicpm_ocr": ("MiniCPMOcrForConditionalGeneration", "MiniCPMOcrProcessor"),
    "qianfan_ocr": ("QianfanOCRForConditionalGeneration", "QianfanOCRProcessor"),
    "hyperclovax_vision_v2": (
        "HyperCLOVAXVisionV2ForConditionalGeneration",
        "HyperCLOVAXVisionV2Processor",
    ),
    "cosmos3_edge": ("Cosmos3EdgeForConditionalGeneration", "Cosmos3EdgeProcessor"),
    "unlimited_ocr": ("UnlimitedOcrForConditionalGeneration", "UnlimitedOcrProcessor"),
    "dots3_note": ("Dots3NoteForConditionalGeneration", "Dots3NoteProcessor"),
    "got_ocr2": ("GotOcr2ForConditionalGeneration", "GotOcr2Processor"),
    # transformers loads PP-Chart2Table's checkpoints with GOT-OCR2's model class
    "pp_chart2table": ("GotOcr2ForConditionalGeneration", "PPChart2TableProcessor"),
    "kosmos2_5": ("Kosmos2_5ForConditionalGeneration", "Kosmos2_5Processor"),
    "fuyu": ("FuyuForCausalLM", "FuyuProcessor"),
    # the Reasoner of the unified checkpoints, with Qwen3-VL's processor
    "cosmos3_omni": ("Cosmos3OmniForConditionalGeneration", "Qwen3VLProcessor"),
    # transformers' auto classes load Glmga with GLM-4.6V's model and processor
    "glmga": ("Glm46VForConditionalGeneration", "Glm46VProcessor"),
    "cohere_compass": ("CohereCompassForConditionalGeneration", "CohereCompassProcessor"),
    "muse_glimmer": ("MuseGlimmerForConditionalGeneration", "MuseGlimmerProcessor"),
    "step3p7": ("Step3p7ForConditionalGeneration", "Step3p7Processor"),
    "deepseek_ocr2": ("DeepseekOcr2ForConditionalGeneration", "DeepseekOcr2Processor"),
    "minimax_m3_vl": ("MiniMaxM3SparseForConditionalGeneration", "MiniMaxM3VLProcessor"),
    "glm5_next": ("Glm5NextForConditionalGeneration", "Glm5NextProcessor"),
    "qwen4_exp": ("Qwen4ExpForConditionalGeneration", "Qwen3VLProcessor"),
    "inkling2": ("Inkling2ForConditionalGeneration", "Inkling2Processor"),
    "inkling": ("InklingForConditionalGeneration", "InklingProcessor"),
    "muse_spark": ("MuseSparkForConditionalGeneration", "MuseSparkProcessor"),
    APPLE: ("LlavaQwen2ForCausalLM", "LlavaProcessor"),
}


def test_registry_covers_the_families():
    assert set(FAMILIES) == set(MODEL_CLASSES) - {APPLE}
    assert FAMILIES["qwen2_5_vl"].__mro__[1] is FAMILIES["qwen2_vl"]  # shares M-RoPE
    assert all(adapter.family == family for family, adapter in FAMILIES.items())


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_tiny_model_loads_back_as_the_real_class(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    model_class, processor_class = MODEL_CLASSES[family]
    assert type(loaded.model).__name__ == model_class
    assert type(loaded.processor).__name__ == processor_class
    assert loaded.num_layers == NUM_LAYERS
    assert loaded.model.config.get_text_config().num_hidden_layers == NUM_LAYERS
    assert loaded.hidden_size == 64
    assert isinstance(loaded, FAMILIES[entry(tiny_dirs[family], family)["family"]])

    images = [drawing((96, 64), (220, 40, 40)), drawing((80, 120), (40, 160, 40))]
    inputs = loaded.inputs(images, ["a cat", "This image contains the following types of objects:"])
    with torch.inference_mode():
        output = loaded.forward(inputs, output_hidden_states=True)
    assert len(output.hidden_states) == NUM_LAYERS + 1
    # the last hidden state is the final norm's output, i.e. what the hooks see
    seen = []
    handle = loaded.final_norm.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.inference_mode():
        loaded.forward(inputs)
    handle.remove()
    torch.testing.assert_close(seen[0], output.hidden_states[-1])


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_image_placeholder_comes_before_the_text(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], ["a dog"])
    ids = inputs["input_ids"][0].tolist()
    image = loaded.image_token_mask(inputs)[0]
    assert image.sum() >= 3  # expanded by the processor into several image tokens
    if loaded.image_token_id is not None:  # Kosmos-2 marks the positions in its inputs
        assert (inputs["input_ids"][0][image] == loaded.image_token_id).all()
    last_image = int(image.nonzero().max())
    # (PaliGemma's processor ends the prompt with a newline, Fuyu's with <0x04>)
    after = loaded.tokenizer.decode(ids[last_image + 1 :]).removesuffix("<0x04>")
    assert after.rstrip("\n").endswith("a dog")
    assert "a dog" not in loaded.tokenizer.decode(ids[: last_image + 1])


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_the_image_changes_the_activations(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [drawing((64, 64), (230, 30, 30)), drawing((64, 64), (30, 30, 230))]
    with torch.inference_mode():
        output = loaded.forward(loaded.inputs(images, ["a cat", "a cat"]))
    assert not torch.allclose(output.logits[0], output.logits[1], atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_side(tiny_dirs, padding_side):
    loaded = load_model("tiny", entry(tiny_dirs["llava"], "llava"))
    loaded.padding_side = padding_side
    images = [drawing((64, 64), (0, 0, 0))] * 2
    mask = loaded.inputs(images, ["a", "a cat on a couch near the window"])["attention_mask"]
    padded_row = mask[0]
    assert padded_row.sum() < len(padded_row)
    assert (padded_row[0] == 0) == (padding_side == "left")


def test_tiny_models_are_seeded(tmp_path, tiny_dirs):
    build_tiny_model("llava", tmp_path / "same", {"num_layers": NUM_LAYERS, "seed": 0})
    build_tiny_model("llava", tmp_path / "other", {"num_layers": NUM_LAYERS, "seed": 1})
    reference = load_file(tiny_dirs["llava"] / "model.safetensors")
    same = load_file(tmp_path / "same" / "model.safetensors")
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert all(torch.equal(reference[key], same[key]) for key in reference)
    assert not all(torch.equal(reference[key], other[key]) for key in reference)
    tokenizer = (tiny_dirs["llava"] / "tokenizer.json").read_text()
    assert (tmp_path / "same" / "tokenizer.json").read_text() == tokenizer


def test_tiny_keys_shape_the_model(tmp_path):
    build_tiny_model(
        "qwen2_vl", tmp_path / "m", {"num_layers": 2, "hidden_size": 32, "max_image_tokens": 16}
    )
    loaded = load_model("m", entry(tmp_path / "m", "qwen2_vl", num_layers=2))
    assert (loaded.num_layers, loaded.hidden_size) == (2, 32)
    inputs = loaded.inputs([drawing((300, 200), (0, 0, 0))], ["a"])
    assert (
        inputs["input_ids"] == loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ).sum() <= 16


def test_unknown_family_is_named_with_the_supported_ones(tiny_dirs):
    families = rf"supported families: qwen2_vl, qwen2_5_vl, llava, .*, {list(FAMILIES)[-1]}$"
    with pytest.raises(ValueError, match=rf"'my-model'.*'gpt5'.*{families}") as error:
        load_model("my-model", {**entry(tiny_dirs["llava"], "llava"), "family": "gpt5"})
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="unknown family 'gpt5'"):
        build_tiny_model("gpt5", "unused", {"num_layers": 2})


def test_layer_count_mismatch_names_model_and_both_numbers(tiny_dirs):
    with pytest.raises(ModelError, match=r"'big'.*num_layers=5.*has 3 decoder layers"):
        load_model("big", entry(tiny_dirs["llava"], "llava", num_layers=5))


def test_hidden_size_mismatch_names_model_and_both_numbers(tiny_dirs):
    with pytest.raises(ModelError, match=r"'wide'.*hidden_size=4096.*has 64$"):
        load_model("wide", {**entry(tiny_dirs["llava"], "llava"), "hidden_size": 4096})


@pytest.mark.parametrize("where", ["absolute", "relative", "nested"])
def test_missing_local_checkpoint_is_one_line_naming_the_model_and_path(tmp_path, where):
    hf_id = {
        "absolute": str(tmp_path / "models" / "qwen2-vl-2b"),
        "relative": "./models/qwen2-vl-2b",
        "nested": "checkpoints/qwen/qwen2-vl-2b",
    }[where]
    with pytest.raises(ModelError) as error:
        load_model("m", {"family": "qwen2_vl", "hf_id": hf_id, "num_layers": 2})
    assert str(error.value) == (
        f"model 'm': hf_id {hf_id} is not a checkpoint directory (no such directory); fix the "
        "path, or give a hub id of the form 'org/name'"
    )


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ModelError, match=r"^model 'm': .*empty has no config.json; not a checkpoint$"
    ):
        load_model("m", {"family": "llava", "hf_id": str(tmp_path / "empty"), "num_layers": 2})


def test_processor_without_image_token(tmp_path, tiny_dirs):
    broken = tmp_path / "no-image-token"
    shutil.copytree(tiny_dirs["llava"], broken)
    config_path = broken / "processor_config.json"
    processor_config = json.loads(config_path.read_text())
    processor_config["image_token"] = "<no_such_token>"
    config_path.write_text(json.dumps(processor_config))
    with pytest.raises(
        ModelError, match=r"'text-only'.*no image token.*<no_such_token>.*supported families: qwen2"
    ) as error:
        load_model("text-only", entry(broken, "llava"))
    assert "\n" not in str(error.value)


def test_bad_tiny_keys_are_named_and_nothing_is_written(tmp_path):
    with pytest.raises(ModelError, match=r"unknown keys \['hidden'\]"):
        build_tiny_model("llava", tmp_path / "m", {"num_layers": 2, "hidden": 32})
    with pytest.raises(ModelError, match="num_layers is required"):
        build_tiny_model("llava", tmp_path / "m", {"hidden_size": 32})
    assert list(tmp_path.iterdir()) == []


def test_failed_build_keeps_the_previous_model(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("{}")

    def fail(self, save_directory, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transformers.LlavaProcessor.save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        build_tiny_model("llava", target, {"num_layers": 2})
    assert list(tmp_path.iterdir()) == [target]
    assert (target / "config.json").read_text() == "{}"


def test_auto_dtype_is_bfloat16_on_cuda_only(tiny_dirs):
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    loaded = load_model("m", {**entry(tiny_dirs["llava"], "llava"), "dtype": "auto"})
    assert loaded.model.dtype == torch.float32


def test_unknown_dtype_is_named(tiny_dirs):
    with pytest.raises(ModelError, match=r"'m'.*dtype 'float8'"):
        load_model("m", {**entry(tiny_dirs["llava"], "llava"), "dtype": "float8"})


@pytest.mark.parametrize(("configured", "expected"), [(None, "sdpa"), ("eager", "eager")])
def test_attention_implementation_comes_from_the_entry(tiny_dirs, configured, expected):
    settings = {} if configured is None else {"attn_implementation": configured}
    loaded = load_model("m", {**entry(tiny_dirs["qwen2_vl"], "qwen2_vl"), **settings})
    text_config = loaded.model.config.get_text_config()
    assert loaded.model.config._attn_implementation == expected
    assert text_config._attn_implementation == expected


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed"
)
def test_flash_attention_without_its_package_is_named(tiny_dirs):
    flash = {**entry(tiny_dirs["llava"], "llava"), "attn_implementation": "flash_attention_2"}
    with pytest.raises(ModelError, match=r"'m': cannot load .*FlashAttention2") as error:
        load_model("m", flash)
    assert "\n" not in str(error.value)


def test_too_old_peft_for_the_vision_lora_is_one_line_naming_both_versions(
    tmp_path, tiny_dirs, monkeypatch
):
    """transformers' own bound is checked before its PEFT integration fails deep inside."""
    checkpoint = phi4_with_vision_lora(tmp_path, tiny_dirs)
    monkeypatch.setitem(base.transformers_requirements, "peft", "peft>=99.0")
    installed = importlib.metadata.version("peft")
    with pytest.raises(ModelError) as error:
        load_model("phi4", entry(checkpoint, "phi4_multimodal"))
    assert str(error.value) == (
        f"model 'phi4': phi4_multimodal's vision-lora needs peft>=99.0 (transformers "
        f"{transformers.__version__}'s requirement), but peft {installed} is installed; "
        "pip install 'peft>=99.0'"
    )


@pytest.mark.skipif(not available("fast_vlm"), reason="fast_vlm needs timm")
def test_missing_timm_is_named_before_any_weights_are_read(tiny_dirs, monkeypatch):
    version = importlib.metadata.version

    def without_timm(package):
        if package == "timm":
            raise importlib.metadata.PackageNotFoundError(package)
        return version(package)

    monkeypatch.setattr(base.importlib.metadata, "version", without_timm)
    monkeypatch.setattr(base.AutoModelForImageTextToText, "from_pretrained", None)
    needed = base.transformers_requirements["timm"]
    with pytest.raises(ModelError) as error:
        load_model("fastvlm", entry(tiny_dirs["fast_vlm"], "fast_vlm"))
    assert str(error.value) == (
        f"model 'fastvlm': fast_vlm needs {needed} (transformers {transformers.__version__}'s "
        f"requirement), but it is not installed; pip install '{needed}'"
    )
    unbuilt = tiny_dirs["fast_vlm"].parent / "unbuilt"
    with pytest.raises(ModelError, match=r"^tiny fast_vlm model: fast_vlm needs timm"):
        build_tiny_model("fast_vlm", unbuilt, {"num_layers": 1})
    assert not unbuilt.exists()


# ------------------------------------------------------------------ image prefix reuse

OBJECTS = "This image contains the following types of objects:"
PROMPTS = [
    [OBJECTS, f"{OBJECTS} person, car", "a cat", ""],
    [f"{OBJECTS} dog", OBJECTS],
    ["a plate with a sandwich"],
]


def test_shared_prefix_length_leaves_every_suffix_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps one token
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[7], [7, 8]]) == 0


def test_every_family_but_the_prefix_lm_reuses_its_image_prefix():
    """All families but PaliGemma, InstructBLIP and Unlimited-OCR are causal over their image
    tokens (Gemma-3's bidirectional attention stays within the image), compute them from the
    image alone (InstructBLIP's Q-Former reads the prompt) and attend to a continued cache as
    to one pass (Unlimited-OCR's sliding layers do not); test_extract checks reuse against the
    full pass."""
    assert [family for family, adapter in FAMILIES.items() if not adapter.prefix_reuse] == [
        "paligemma",
        "instructblip",
        "unlimited_ocr",
    ]


@pytest.mark.skipif(not selected("instructblip"), reason="not in VLPROBE_TINY_FAMILIES")
def test_instructblip_image_tokens_depend_on_the_prompt(tiny_dirs):
    """InstructBLIP's Q-Former reads the prompt: the decoder's image tokens differ between two
    prompts of one image from the first layer on, so no image prefix can be shared."""
    loaded = load_model("tiny", entry(tiny_dirs["instructblip"], "instructblip"))
    image = drawing((64, 64), (220, 40, 40))
    assert loaded.prefix_batch([image], [["a cat", "a dog"]]) is None
    states = []
    for text in ("a cat", "two people riding bicycles"):
        inputs = loaded.inputs([image], [text])
        with torch.inference_mode():
            state = loaded.forward(inputs, output_hidden_states=True).hidden_states[0]
        states.append(state[0][loaded.image_token_mask(inputs)[0]])
    assert not torch.allclose(states[0], states[1], atol=1e-4)


@pytest.mark.skipif(not selected("unlimited_ocr"), reason="not in VLPROBE_TINY_FAMILIES")
def test_unlimited_ocr_reads_a_continued_cache_through_a_window(tiny_dirs):
    """Unlimited-OCR's reference-sliding layers attend to a cache's first pass in full but to
    later tokens through their sliding window: past the window, a continued pass differs from
    one pass over the same text, so its adapter never splits a prefix."""
    loaded = load_model("tiny", entry(tiny_dirs["unlimited_ocr"], "unlimited_ocr"))
    window = loaded.model.config.text_config.sliding_window

    def last_logits(ids):  # one pass, and a pass of all but 4 tokens continuing a cache
        with torch.inference_mode():
            full = loaded.model(input_ids=ids).logits[:, -1]
            cache = loaded.new_cache()
            loaded.model(input_ids=ids[:, :4], past_key_values=cache, use_cache=True)
            continued = loaded.model(input_ids=ids[:, 4:], past_key_values=cache, use_cache=True)
        return full, continued.logits[:, -1]

    long = loaded.tokenizer(" a cat" * window, return_tensors="pt")["input_ids"]
    assert long.shape[1] > window + 4
    assert not torch.allclose(*last_logits(long), atol=1e-4)
    torch.testing.assert_close(*last_logits(long[:, : window // 2]))  # within the window


@pytest.mark.skipif(not selected("deepseek_ocr2"), reason="not in VLPROBE_TINY_FAMILIES")
def test_deepseek_ocr2_tiles_an_image_larger_than_a_tile(tiny_dirs):
    """The tests' images fit in one DeepSeek-OCR 2 tile (global view only); a larger one gets
    local tiles too, each one's query tokens before the global view's and the separator, and
    prefix reuse equals the full pass on it."""
    loaded = load_model("tiny", entry(tiny_dirs["deepseek_ocr2"], "deepseek_ocr2"))
    image = drawing((200, 150), (220, 40, 40))
    inputs = loaded.inputs([image], ["a cat"])
    tiles = int(inputs["num_local_patches"][0])
    assert tiles >= 2
    assert int(loaded.image_token_mask(inputs).sum()) == 144 * tiles + 256 + 1
    prefix = loaded.prefix_batch([image], [["a cat", "a dog"]])
    with torch.inference_mode():
        full = loaded.forward(inputs, output_hidden_states=True).hidden_states[-1]
        cache = loaded.new_cache()
        loaded.forward_cached(prefix.inputs, cache)
        suffix, _ = loaded.suffix_inputs(prefix.cached, torch.tensor([0]), [prefix.suffixes[0][0]])
        rest = loaded.forward_cached(suffix, cache, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(rest[0], full[0, -rest.shape[1] :], atol=1e-5, rtol=1e-4)


def left_padded_states(loaded, ids, padding=0, pad_id=None, positions=False):
    """Every hidden state [states, 1, tokens, hidden] of the one row ``ids`` after ``padding``
    masked ``pad_id`` tokens (the tokenizer's padding token by default), from the adapter's
    forward pass; with 1-d position ids counted from the row's first token if ``positions``."""
    pad_id = loaded.tokenizer.pad_token_id if pad_id is None else pad_id
    padded = torch.cat([torch.full((1, padding), pad_id), ids], dim=1)
    mask = (torch.arange(padded.shape[1]) >= padding).long()[None]
    inputs = {"input_ids": padded, "attention_mask": mask}
    if positions:
        inputs["position_ids"] = mask.cumsum(1) - 1
    with torch.inference_mode():
        out = loaded.forward(inputs, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, :, padding:]


def assert_states_are_stream_means(loaded, ids, states, **inputs):
    """``states`` (the adapter's, of the one row ``ids``) are transformers' hidden states with
    each layer input's residual streams averaged; the last one, the decoder's output, as is."""
    with torch.inference_mode():
        raw = loaded.model(input_ids=ids, output_hidden_states=True, **inputs).hidden_states
    for state, streams in zip(states[:-1], raw[:-1], strict=True):
        streams = streams.reshape(*streams.shape[:2], -1, loaded.hidden_size)
        assert streams.shape[2] > 1  # several streams per token
        torch.testing.assert_close(state, streams.mean(dim=2))
    torch.testing.assert_close(states[-1], raw[-1])


@pytest.mark.skipif(not selected("minimax_m3_vl"), reason="not in VLPROBE_TINY_FAMILIES")
def test_minimax_m3_indexer_reads_a_continued_cache_as_one_pass(tiny_dirs, monkeypatch):
    """MiniMax-M3's indexer picks key blocks causally, so with few blocks kept (sparse
    attention) a continued pass still equals one pass; but its blocks count from the first
    slot, so left padding then changes a row's states, while under the tiny model's (and real
    prompts') dense attention it does not."""
    loaded = load_model("tiny", entry(tiny_dirs["minimax_m3_vl"], "minimax_m3_vl"))
    indexers = [layer.self_attn.indexer for layer in loaded.decoder_layers]
    assert indexers[0] is not None and indexers[1] is None  # sparse and full layers
    ids = loaded.tokenizer(" a cat on a couch" * 6, return_tensors="pt")["input_ids"]

    def states(ids, pad=0):  # the last layer's states of ids (after pad padding tokens)
        return left_padded_states(loaded, ids, pad)[-1]

    def continued(ids, split):
        cache = loaded.new_cache()
        with torch.inference_mode():
            loaded.model(input_ids=ids[:, :split], past_key_values=cache, use_cache=True)
            out = loaded.model(
                input_ids=ids[:, split:],
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
            )
        return out.hidden_states[-1]

    torch.testing.assert_close(states(ids, pad=3), states(ids))  # dense: padding changes nothing
    for indexer in indexers[::2]:
        monkeypatch.setattr(indexer, "topk_blocks", 2)
    assert ids.shape[1] > 2 * indexers[0].block_size  # more blocks than are kept
    torch.testing.assert_close(continued(ids, 10), states(ids)[:, 10:])
    assert not torch.allclose(states(ids, pad=3), states(ids), atol=1e-4)

    # past the dense span, a left-padded batch is refused, one without padding runs
    monkeypatch.setattr(loaded.model.config.get_text_config(), "index_topk_blocks", 2)
    image = drawing((64, 64), (200, 30, 30))
    long, short = " a cat on a couch" * 3, " a cat"
    with torch.inference_mode(), pytest.raises(ModelError, match="model 'tiny': a left-padded"):
        loaded.forward(loaded.inputs([image, image], [long, short]))
    with torch.inference_mode():
        loaded.forward(loaded.inputs([image, image], [long, long]))


@pytest.mark.skipif(not selected("glm5_next"), reason="not in VLPROBE_TINY_FAMILIES")
def test_glm5_next_sparse_indexer_reads_a_continued_cache_and_padding_as_one_row(
    tiny_dirs, monkeypatch
):
    """GLM-5.3-Flash's indexer pools keys from a row's first token and caches them with their
    padding: with few pools kept (sparse attention), a continued pass and a left-padded row
    still equal the row alone in one pass; hidden states collapse the layers' streams."""
    loaded = load_model("tiny", entry(tiny_dirs["glm5_next"], "glm5_next"))
    (indexer,) = [
        layer.self_attn.indexer
        for layer in loaded.decoder_layers
        if getattr(layer.self_attn, "indexer", None) is not None
    ]
    ids = loaded.tokenizer(" a cat on a couch" * 6, return_tensors="pt")["input_ids"]
    dense = left_padded_states(loaded, ids)  # the tiny model keeps every pool
    monkeypatch.setattr(indexer, "index_topk", 2 * indexer.index_kpool)
    assert ids.shape[1] > 4 * indexer.index_kpool  # more pools than are kept

    cache = loaded.new_cache()
    with torch.inference_mode():
        loaded.forward_cached({"input_ids": ids[:, :10]}, cache)
        continued = loaded.forward_cached({"input_ids": ids[:, 10:]}, cache).logits
        full = loaded.model(input_ids=ids).logits
    alone = left_padded_states(loaded, ids)
    assert alone.shape == (loaded.num_layers + 1, 1, ids.shape[1], loaded.hidden_size)
    assert not torch.allclose(alone, dense, atol=1e-4)  # the pools kept decide the states
    torch.testing.assert_close(left_padded_states(loaded, ids, 3), alone)
    torch.testing.assert_close(continued, full[:, -1:])
    assert_states_are_stream_means(loaded, ids, alone)


@pytest.mark.skipif(not selected("qwen4_exp"), reason="not in VLPROBE_TINY_FAMILIES")
def test_qwen4_exp_sparse_indexer_and_ngrams_read_a_continued_cache_and_padding_as_one_row(
    tiny_dirs,
):
    """Qwen4-Exp's indexer forms blocks from each query's visible keys and caches its keys and
    positions; its PLE layer caches its n-gram context and reads padding as EOS: with few
    blocks kept (sparse attention, as in the tiny model), a continued pass and a row
    left-padded with any token equal the row alone in one pass; hidden states collapse the
    layers' streams."""
    loaded = load_model("tiny", entry(tiny_dirs["qwen4_exp"], "qwen4_exp"))
    (indexer,) = [
        layer.self_attn.indexer for layer in loaded.decoder_layers if hasattr(layer, "self_attn")
    ]
    assert loaded.decoder_layers[0].ple is not None
    assert indexer.block_topk == 2
    ids = loaded.tokenizer(" a cat on a couch" * 6, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 4 * indexer.compress_ratio  # more blocks than are kept
    pad = loaded.tokenizer.convert_tokens_to_ids("<|im_start|>")  # not EOS

    positions = torch.arange(ids.shape[1])[None]
    cache = loaded.new_cache()
    with torch.inference_mode():
        loaded.forward_cached({"input_ids": ids[:, :10], "position_ids": positions[:, :10]}, cache)
        rest = {"input_ids": ids[:, 10:], "position_ids": positions[:, 10:]}
        continued = loaded.forward_cached(rest, cache).logits
        full = loaded.model(input_ids=ids).logits
    alone = left_padded_states(loaded, ids, positions=True)
    assert alone.shape == (loaded.num_layers + 1, 1, ids.shape[1], loaded.hidden_size)
    torch.testing.assert_close(left_padded_states(loaded, ids, 3, pad, positions=True), alone)
    torch.testing.assert_close(continued, full[:, -1:])
    assert_states_are_stream_means(loaded, ids, alone, position_ids=positions)


@pytest.mark.parametrize("family", ["inkling", "inkling2"])
def test_inklings_read_a_continued_cache_as_one_pass_past_their_windows(tiny_dirs, family):
    """Inkling's and Inkling-2's sliding windows and relative position logits count cache
    indices, and their short convolutions carry their state in the cache: a pass continuing a
    cache past the window and the logits' extent equals one pass, so their image prefix is
    reused."""
    if not selected(family):
        pytest.skip("not in VLPROBE_TINY_FAMILIES")
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    text_config = loaded.model.config.text_config
    ids = loaded.tokenizer(" a cat" * text_config.rel_extent, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > text_config.rel_extent + 4 > text_config.sliding_window + 4
    with torch.inference_mode():
        full = loaded.model(input_ids=ids).logits[:, -1]
        cache = loaded.new_cache()
        loaded.model(input_ids=ids[:, :4], past_key_values=cache, use_cache=True)
        continued = loaded.model(input_ids=ids[:, 4:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(continued.logits[:, -1], full)


@pytest.mark.skipif(not selected("paligemma"), reason="not in VLPROBE_TINY_FAMILIES")
def test_paligemma_is_a_prefix_lm_so_a_reused_prefix_would_be_wrong(tiny_dirs, monkeypatch):
    """PaliGemma's image tokens attend to the prompt (one bidirectional block), so a prefix run
    alone gives other image states than the full pass: its adapter never splits one."""
    loaded = load_model("tiny", entry(tiny_dirs["paligemma"], "paligemma"))
    image = drawing((64, 64), (220, 40, 40))
    assert loaded.prefix_batch([image], [["a cat", "a dog"]]) is None
    full = loaded.inputs([image], ["a cat"])
    images = loaded.image_token_mask(full)[0]
    with torch.inference_mode():
        states = loaded.forward(full, output_hidden_states=True).hidden_states
        monkeypatch.setattr(type(loaded), "prefix_reuse", True)
        prefix = loaded.prefix_batch([image], [["a cat", "a dog"]])
        alone = loaded.forward_cached(prefix.inputs, loaded.new_cache(), output_hidden_states=True)
    n = int(images.sum())
    last = states[-1][0][images]
    assert not torch.allclose(alone.hidden_states[-1][0][:n], last, atol=1e-4)


@pytest.mark.skipif(not selected("shieldgemma2"), reason="not in VLPROBE_TINY_FAMILIES")
def test_shieldgemma2_loads_its_language_model_and_takes_the_prompt(tiny_dirs):
    """The Gemma-3 model inside the classifier, with the checkpoint's decoder weights (not the
    random ones that AutoModelForImageTextToText leaves), and the prompt where its processor's
    own call would write policy prompts."""
    loaded = load_model("tiny", entry(tiny_dirs["shieldgemma2"], "shieldgemma2"))
    saved = load_file(tiny_dirs["shieldgemma2"] / "model.safetensors")
    (embedding,) = [
        v for k, v in saved.items() if k.endswith("language_model.model.embed_tokens.weight")
    ]
    torch.testing.assert_close(
        loaded.model.get_input_embeddings().weight, embedding, rtol=0, atol=0
    )
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))] * 2, ["a cat", "a dog on a couch"])
    assert inputs["input_ids"].shape[0] == 2  # one row per prompt, not per policy
    assert loaded.tokenizer.decode(inputs["input_ids"][1]).endswith("a dog on a couch")
    assert inputs["token_type_ids"][0].sum() == loaded.image_token_mask(inputs)[0].sum()


@pytest.mark.skipif(not selected("mistral_large4"), reason="not in VLPROBE_TINY_FAMILIES")
def test_mistral_large4_counts_positions_from_each_rows_first_token(tiny_dirs, monkeypatch):
    """Mistral Large 4 scales its queries by log(position + 1): under the plain 0, 1, 2, ...
    positions a left-padded row's states would depend on its padding; its adapter's don't."""
    loaded = load_model("tiny", entry(tiny_dirs["mistral_large4"], "mistral_large4"))
    image = drawing((64, 64), (220, 40, 40))
    prompts = ["a cat", "a cat on a couch near the window"]

    def last_state_of_short_prompt(padding_side):
        loaded.padding_side = padding_side
        inputs = loaded.inputs([image, image], prompts)
        with torch.inference_mode():
            states = loaded.forward(inputs, output_hidden_states=True).hidden_states[-1]
        return states[0][inputs["attention_mask"][0].bool()][-1]

    torch.testing.assert_close(
        last_state_of_short_prompt("left"), last_state_of_short_prompt("right")
    )
    monkeypatch.setattr(type(loaded), "forward", base.LoadedVLM.forward)
    assert not torch.allclose(
        last_state_of_short_prompt("left"), last_state_of_short_prompt("right"), atol=1e-4
    )


def test_a_prefix_lm_family_never_splits_a_prefix(tiny_dirs, monkeypatch):
    loaded = load_model("tiny", entry(tiny_dirs["llava"], "llava"))
    monkeypatch.setattr(type(loaded), "prefix_reuse", False)
    assert loaded.prefix_batch([drawing((64, 64), (0, 0, 0))], [["a cat", "a dog"]]) is None


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_prefix_and_suffix_are_the_processors_tokens(tiny_dirs, family):
    """Split on the full text's tokens: prefix + suffix are exactly the processor's token ids
    for the image and the prompt, the whole image is in the prefix, and text that all prompts
    of an image start with is in the prefix too."""
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [
        drawing((96, 64), (220, 40, 40)),
        drawing((64, 120), (40, 160, 40)),
        drawing((64, 64), (0, 0, 200)),
    ]
    prompts_of_images = PROMPTS
    if not loaded.prefix_reuse:  # a prefix-LM (PaliGemma) never splits a prefix
        assert loaded.prefix_batch(images, PROMPTS) is None
        return
    if image_ends_text(loaded):
        # nothing follows the image tokens (Phi-4's, or a bare placeholder): after an empty
        # prompt the image ends the text, and a suffix cannot be cut after it; such images
        # take the plain path
        assert loaded.prefix_batch(images, PROMPTS) is None
        prompts_of_images = [[text for text in texts if text] for texts in PROMPTS]
    prefix = loaded.prefix_batch(images, prompts_of_images)
    assert prefix is not None
    ids, mask = prefix.inputs["input_ids"], prefix.attention_mask.bool()
    image_ids = set(loaded.image_token_ids)
    image = loaded.image_token_mask(prefix.inputs)
    for row, (picture, prompts) in enumerate(zip(images, prompts_of_images, strict=True)):
        prefix_ids = ids[row][mask[row]].tolist()
        assert not mask[row, : ids.shape[1] - len(prefix_ids)].any()  # padded on the left
        expected = [
            loaded.process([picture], [loaded.prompt(text)], "left")["input_ids"][0].tolist()
            for text in prompts
        ]
        full = loaded.process([picture], [loaded.prompt(prompts[0])], "left")
        # every image feature of the full sequence is in the prefix
        assert image[row].sum() == loaded.image_token_mask(full).sum() >= 3
        for suffix, want in zip(prefix.suffixes[row], expected, strict=True):
            assert prefix_ids + suffix == want
            assert suffix and not image_ids & set(suffix)
        if len(prompts) == 2:  # OBJECTS and OBJECTS + " dog": all of OBJECTS but its last token
            assert prefix_ids == expected[1][:-1]
    assert set(prefix.inputs) >= {"input_ids", "attention_mask"}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen2_vl_suffix_positions_continue_the_m_rope_positions(tiny_dirs, family):
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [drawing((96, 64), (220, 40, 40)), drawing((64, 120), (40, 160, 40))]
    prompts = [["a cat", "a dog on a couch"], ["two people"]]
    prefix = loaded.prefix_batch(images, prompts)
    assert prefix.position_ids.shape == (3, *prefix.inputs["input_ids"].shape)
    rows = torch.tensor([0, 0, 1])
    suffixes = [prefix.suffixes[0][0], prefix.suffixes[0][1], prefix.suffixes[1][0]]
    inputs, suffix_mask = loaded.suffix_inputs(prefix.cached, rows, suffixes)
    assert inputs["position_ids"].shape == (3, 3, suffix_mask.shape[1])
    assert (
        inputs["attention_mask"].shape[1] == prefix.attention_mask.shape[1] + suffix_mask.shape[1]
    )
    for k, (row, text) in enumerate([(0, "a cat"), (0, "a dog on a couch"), (1, "two people")]):
        full = loaded.inputs([images[row]], [text])
        positions, _ = loaded.model.model.get_rope_index(
            full["input_ids"],
            mm_token_type_ids=full["mm_token_type_ids"],
            image_grid_thw=full["image_grid_thw"],
        )
        n_suffix = len(suffixes[k])
        # the full sequence's positions of the suffix tokens (images differ: 6 vs 8 rows)
        torch.testing.assert_close(
            inputs["position_ids"][:, k, :n_suffix], positions[:, 0, -n_suffix:]
        )


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(family, marks=pytest.mark.skipif(not selected(family), reason="not selected"))
        for family in ["qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"]
    ],
)
def test_omni_thinker_prefix_holds_the_image_markers_and_suffixes_continue_m_rope(
    tiny_dirs, family
):
    """The Omni thinkers' get_rope_index takes the token after an image for its end marker, so
    the prefix keeps <|vision_bos|> ... <|vision_eos|> whole; suffix positions are the full
    sequence's."""
    loaded = load_model("tiny", entry(tiny_dirs[family], family))
    images = [drawing((96, 64), (220, 40, 40)), drawing((64, 120), (40, 160, 40))]
    texts = [["a cat", "a dog on a couch"], ["two people"]]
    prefix = loaded.prefix_batch(images, texts)
    end_marker = loaded.tokenizer.convert_tokens_to_ids(loaded.processor.vision_eos_token)
    for row in range(2):
        prefix_ids = prefix.inputs["input_ids"][row][prefix.attention_mask[row].bool()]
        assert end_marker in prefix_ids.tolist()
    rows = torch.tensor([0, 0, 1])
    suffixes = [prefix.suffixes[0][0], prefix.suffixes[0][1], prefix.suffixes[1][0]]
    inputs, _ = loaded.suffix_inputs(prefix.cached, rows, suffixes)
    for k, (row, text) in enumerate([(0, "a cat"), (0, "a dog on a couch"), (1, "two people")]):
        full = loaded.inputs([images[row]], [text])
        positions, _ = loaded.model.get_rope_index(
            full["input_ids"],
            image_grid_thw=full["image_grid_thw"],
            attention_mask=full["attention_mask"],
        )
        n_suffix = len(suffixes[k])
        torch.testing.assert_close(
            inputs["position_ids"][:, k, :n_suffix], positions[:, 0, -n_suffix:]
        )


@pytest.mark.parametrize(
    ("family", "whole"),
    [
        pytest.param(
            family,
            whole,
            marks=pytest.mark.skipif(not selected(family), reason="not in VLPROBE_TINY_FAMILIES"),
        )
        for family, whole in [
            ("qwen2_5_omni_thinker", "Qwen2_5Omni"),
            ("qwen3_omni_moe_thinker", "Qwen3OmniMoe"),
        ]
    ],
)
def test_omni_thinker_of_a_whole_omni_checkpoint(tiny_dirs, tmp_path, family, whole):
    """The published Omni checkpoints hold thinker and talker (model_type qwen2_5_omni,
    qwen3_omni_moe): the family loads their thinker alone, the same model as saved apart."""
    thinker = load_model("tiny", entry(tiny_dirs[family], family))
    config = getattr(transformers, f"{whole}Config")(
        thinker_config=thinker.model.config.to_dict(), enable_audio_output=False
    )
    model = getattr(transformers, f"{whole}ForConditionalGeneration")(config)
    model.thinker.load_state_dict(thinker.model.state_dict())
    model.save_pretrained(tmp_path)
    thinker.processor.save_pretrained(tmp_path)
    for family_name in (family, "auto"):
        loaded = load_model("whole", {**entry(tmp_path, family), "family": family_name})
        assert type(loaded) is FAMILIES[family]
        assert type(loaded.model) is type(thinker.model)
        inputs = loaded.inputs([drawing((64, 64), (200, 30, 30))], ["a cat"])
        with torch.inference_mode():
            ours = loaded.forward(inputs, output_hidden_states=True).hidden_states
            theirs = thinker.forward(inputs, output_hidden_states=True).hidden_states
        for state, expected in zip(ours, theirs, strict=True):
            torch.testing.assert_close(state, expected)
    random = load_model("whole", {**entry(tmp_path, family), "baseline": "random_init"})
    assert type(random.model) is type(thinker.model) and random.num_layers == NUM_LAYERS


@pytest.mark.skipif(not selected("hunyuan_vl"), reason="not in VLPROBE_TINY_FAMILIES")
def test_hunyuan_vl_positions_are_each_sequences_own(tiny_dirs):
    """HunYuanVL's get_rope_index numbers the images of a batch on from row to row (its last
    axis, the image index); the adapter's positions are each row's as if it were alone."""
    loaded = load_model("tiny", entry(tiny_dirs["hunyuan_vl"], "hunyuan_vl"))
    images = [drawing((64, 64), (200, 0, 0)), drawing((96, 64), (0, 0, 200))]
    inputs = loaded.inputs(images, ["a cat", "a dog on a couch"])
    names = ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask")
    batched, _ = loaded.model.model.get_rope_index(**{name: inputs[name] for name in names})
    ours, _ = loaded.rope_index_function(**{name: inputs[name] for name in names})
    second_image = loaded.image_token_mask(inputs)[1]
    # the model's: image index 1 in row 1 (between the begin and end features' tokens)
    assert (batched[-1, 1][second_image][1:-1] == 1).all()
    alone = loaded.inputs(images[1:], ["a dog on a couch"])
    expected, _ = loaded.model.model.get_rope_index(**{name: alone[name] for name in names})
    width = alone["input_ids"].shape[1]
    torch.testing.assert_close(ours[:, 1, -width:], expected[:, 0])


@pytest.mark.skipif(not selected("ernie4_5_vl_moe"), reason="not in VLPROBE_TINY_FAMILIES")
def test_ernie4_5_vl_moe_keeps_the_tokens_of_its_vision_experts_in_the_prefix(tiny_dirs):
    """ERNIE-4.5-VL routes the image start and end tokens to its vision experts, as the image's
    own tokens: they are bound to the image, the prompt after them is not."""
    loaded = load_model("tiny", entry(tiny_dirs["ernie4_5_vl_moe"], "ernie4_5_vl_moe"))
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], ["a cat"])
    ids = inputs["input_ids"][0].tolist()
    end = ids.index(loaded.model.config.image_end_token_id)
    bound = loaded.image_bound_mask(inputs)[0]
    assert inputs["moe_mm_token_type_ids"][0][end] == 1 and bound[end]
    assert not bound[end + 1 :].any()
    assert bound.sum() == inputs["moe_mm_token_type_ids"][0].sum()


@pytest.mark.skipif(not selected("llama4"), reason="not in VLPROBE_TINY_FAMILIES")
def test_tiny_llama4_has_chunked_and_nope_layers_that_the_prompts_span(tiny_dirs):
    """The tiny Llama 4 has the real layer kinds (chunked attention with RoPE, full attention
    without), and a test prompt spans more than one chunk, so the family tests cover chunking."""
    loaded = load_model("tiny", entry(tiny_dirs["llama4"], "llama4"))
    text = loaded.model.config.text_config
    assert text.layer_types == ["chunked_attention", "chunked_attention", "full_attention"]
    assert text.no_rope_layers == [1, 1, 0]  # 0: NoPE
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], ["a cat"])
    assert inputs["input_ids"].shape[1] > text.attention_chunk_size


@pytest.mark.skipif(not selected("granite_docling"), reason="not in VLPROBE_TINY_FAMILIES")
def test_granite_docling_takes_the_processors_route_not_the_density_routers(tiny_dirs):
    """The tiny Granite-Docling has the fine connector path and the density router, as the 500M
    checkpoint; vlprobe's inputs take the processor's route (coarse by default), which the
    processor's fine_route switches to the fine path's four times as many image tokens."""
    loaded = load_model("tiny", entry(tiny_dirs["granite_docling"], "granite_docling"))
    assert loaded.model.model.density_router is not None
    assert loaded.model.model.vision_model.connector.fine is not None
    image = drawing((64, 64), (0, 0, 0))
    coarse = loaded.inputs([image], ["a cat"])
    assert "tile_fine_mask" not in coarse
    fine = loaded.process([image], [loaded.prompt("a cat")], "left", fine_route=True)
    assert loaded.image_token_mask(fine).sum() == 4 * loaded.image_token_mask(coarse).sum()


@pytest.mark.skipif(not selected("minicpmv4_7"), reason="not in VLPROBE_TINY_FAMILIES")
def test_minicpmv4_7_keeps_the_newline_after_the_image_in_the_prefix(tiny_dirs):
    """MiniCPM-V 4.7's canvas M-RoPE places the markers and newline right after an image on the
    image's canvas: they belong to the image, unlike a newline in the prompt."""
    loaded = load_model("tiny", entry(tiny_dirs["minicpmv4_7"], "minicpmv4_7"))
    inputs = loaded.inputs([drawing((64, 64), (0, 0, 0))], ["a cat\nIs this right?"])
    ids = inputs["input_ids"][0].tolist()
    newline = loaded.model.config.newline_id
    after_image, in_prompt = (i for i, token in enumerate(ids) if token == newline)
    assert ids[after_image - 1] == loaded.model.config.image_end_id
    bound = loaded.image_bound_mask(inputs)[0]
    assert bound[after_image] and not bound[in_prompt] and not bound[after_image + 1 :].any()


def test_cache_rows_copies_and_leaves_the_prefix_cache_alone(tiny_dirs):
    loaded = load_model("tiny", entry(tiny_dirs["llava"], "llava"))
    images = [drawing((64, 64), (220, 40, 40)), drawing((64, 64), (40, 160, 40))]
    prefix = loaded.prefix_batch(images, [["a cat", "a dog"], ["a bus"]])
    cache = loaded.new_cache()
    with torch.inference_mode():
        loaded.forward_cached(prefix.inputs, cache)
        keys = cache.layers[0].keys.clone()
        selected = loaded.cache_rows(cache, torch.tensor([1, 0, 0]))
        rows = torch.tensor([1, 0, 0])
        inputs, _ = loaded.suffix_inputs(prefix.cached, rows, [[5], [6], [7]])
        loaded.forward_cached(inputs, selected)
    assert torch.equal(cache.layers[0].keys, keys)
    assert torch.equal(selected.layers[0].keys[:, :, : keys.shape[2]], keys[[1, 0, 0]])
    assert selected.get_seq_length() == cache.get_seq_length() + 1


def test_kosmos2_suffix_positions_continue_the_absolute_positions(tiny_dirs):
    """Kosmos-2 numbers tokens from the padding id on, skipping padding: a suffix continues
    from its own prefix's length, whatever the left padding of the prefix batch."""
    loaded = load_model("tiny", entry(tiny_dirs["kosmos2"], "kosmos2"))
    images = [drawing((96, 64), (220, 40, 40)), drawing((64, 120), (40, 160, 40))]
    prompts = [["a cat on a couch near the window", "a cat on a couch"], ["two people"]]
    prefix = loaded.prefix_batch(images, prompts)
    lengths = prefix.attention_mask.sum(dim=1)
    assert lengths[0] != lengths[1]  # so one prefix is left-padded
    padding_idx = loaded.model.config.text_config.pad_token_id
    assert prefix.next_position.tolist() == (padding_idx + 1 + lengths).tolist()
    inputs, _ = loaded.suffix_inputs(prefix.cached, torch.tensor([0, 1]), [[5, 6], [7]])
    assert inputs["position_ids"][:, 0].tolist() == prefix.next_position.tolist()


@pytest.mark.skipif(not selected("gemma4"), reason="not in VLPROBE_TINY_FAMILIES")
def test_tiny_gemma4_has_what_the_family_tests_must_cover(tiny_dirs):
    """The tiny Gemma 4 shares keys and values into its last layer (the int logits_to_keep
    that the adapter avoids would let that layer skip positions) and its image tokens attend
    bidirectionally (the mm_token_type_ids that the prefix pass must get change them)."""
    loaded = load_model("tiny", entry(tiny_dirs["gemma4"], "gemma4"))
    text_config = loaded.model.config.get_text_config()
    assert text_config.kv_sharing_modes[-1] == "reuse"
    assert not isinstance(loaded.logits_to_keep, int)
    inputs = loaded.inputs([drawing((96, 64), (220, 40, 40))], ["a cat"])
    image = loaded.image_token_mask(inputs)[0]
    causal = {key: value for key, value in inputs.items() if key != "mm_token_type_ids"}
    with torch.inference_mode():
        both = loaded.forward(inputs, output_hidden_states=True).hidden_states[-1][0]
        one_way = loaded.forward(causal, output_hidden_states=True).hidden_states[-1][0]
    assert not torch.allclose(both[image], one_way[image], atol=1e-4)


# ------------------------------------------------------------------ loading


def remote_code_checkpoint(path: Path) -> Path:
    """A config.json of a remote-code checkpoint that no adapter knows the layout of: a model
    type that transformers does not know, and the remote code's classes in auto_map."""
    path.mkdir()
    config = {
        "model_type": "my_vlm",
        "architectures": ["MyVlmForCausalLM"],
        "auto_map": {
            "AutoConfig": "my_vlm.MyVlmConfig",
            "AutoModelForCausalLM": "my_vlm.MyVlmForCausalLM",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_remote_code_checkpoint_without_the_flag_is_one_clear_error(tiny_dirs):
    without_flag = {**entry(tiny_dirs[APPLE], APPLE), "trust_remote_code": False}
    with pytest.raises(
        ModelError, match=r"'fastvlm'.*remote-code checkpoint.*llava_qwen2.*trust_remote_code: true"
    ) as error:
        load_model("fastvlm", without_flag)
    assert "\n" not in str(error.value)


def test_apple_fastvlm_runs_its_remote_code_and_gets_an_image_placeholder(tiny_dirs):
    """Apple's checkpoint: its own code (llava_qwen.py beside the weights) builds the model, and
    the tokenizer, which has no image token, gets a placeholder that the processor expands into
    one token per image feature."""
    from transformers import AutoTokenizer

    from vlprobe.models.fast_vlm import AppleFastVlmAdapter

    assert "<image>" not in AutoTokenizer.from_pretrained(tiny_dirs[APPLE]).get_vocab()
    loaded = load_model("fastvlm", entry(tiny_dirs[APPLE], APPLE))
    assert type(loaded) is AppleFastVlmAdapter
    assert type(loaded.model).__module__.startswith("transformers_modules.")
    image = drawing((96, 64), (220, 40, 40))
    inputs = loaded.inputs([image], ["a cat"])
    features = loaded.model.encode_images(inputs["pixel_values"])
    assert loaded.image_token_mask(inputs).sum() == features.shape[1] == 16
    # as the config says (image_aspect_ratio: pad), the tower sees the whole image, padded to
    # a square in the mean colour (black here), not its centre cropped
    square = Image.new("RGB", (96, 96), (0, 0, 0))
    square.paste(image, (0, 16))
    tower = loaded.model.get_vision_tower().image_processor
    expected = tower(images=square, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(inputs["pixel_values"], expected)
    cropped = tower(images=image, return_tensors="pt")["pixel_values"]
    assert not torch.allclose(inputs["pixel_values"], cropped)


@pytest.mark.parametrize("text", ["a cat", "This image contains the following types of objects:"])
def test_apple_fastvlm_adapter_computes_what_its_own_forward_does(tiny_dirs, text):
    """The adapter splices the image features into the embeddings itself: every hidden state
    and the last position's logits equal those of Apple's forward on its -200 token."""
    loaded = load_model("fastvlm", entry(tiny_dirs[APPLE], APPLE))
    inputs = loaded.inputs([drawing((96, 64), (220, 40, 40))], [text])
    with torch.inference_mode():
        ours = loaded.forward(inputs, output_hidden_states=True)
        own = apple_forward(loaded, inputs, output_hidden_states=True)
    assert len(ours.hidden_states) == len(own.hidden_states) == NUM_LAYERS + 1
    states = zip(ours.hidden_states, own.hidden_states, strict=True)
    for index, (state, expected) in enumerate(states):
        torch.testing.assert_close(state, expected, msg=lambda m, i=index: f"state {i}: {m}")
    torch.testing.assert_close(ours.logits, own.logits[:, -1:])


@pytest.mark.skipif(not available("fast_vlm"), reason="fast_vlm needs timm")
def test_remote_code_loads_through_the_causal_lm_class_with_the_flag(
    tmp_path, tiny_dirs, monkeypatch
):
    """For a remote-code layout that no adapter knows, the flag reaches both loaders, the
    auto_map's class loads the model, and the decoder is found through get_decoder() when the
    family's path is missing in it (the tiny native model stands in for what the code returns)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlprobe.models.fast_vlm import FastVlmAdapter

    checkpoint = remote_code_checkpoint(tmp_path / "my-vlm")
    tiny_processor = AutoProcessor.from_pretrained(tiny_dirs["fast_vlm"])
    tiny_model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["fast_vlm"])
    calls = []

    def processor(hf_id, **kwargs):
        calls.append(("processor", hf_id, kwargs))
        return tiny_processor

    def causal_lm(hf_id, **kwargs):
        calls.append(("model", hf_id, kwargs))
        return tiny_model

    monkeypatch.setattr(base.AutoProcessor, "from_pretrained", processor)
    monkeypatch.setattr(base.AutoModelForCausalLM, "from_pretrained", causal_lm)
    remote = type("RemoteFastVlm", (FastVlmAdapter,), {"language_model_path": "no.such.path"})
    loaded = remote.load("my-vlm", {**entry(checkpoint, "fast_vlm"), "trust_remote_code": True})
    assert [(kind, hf_id) for kind, hf_id, _ in calls] == [
        ("processor", str(checkpoint)),
        ("model", str(checkpoint)),
    ]
    assert all(kwargs["trust_remote_code"] is True for _, _, kwargs in calls)
    assert loaded.decoder_layers is loaded.model.get_decoder().layers
    assert loaded.num_layers == NUM_LAYERS


@pytest.mark.skipif(not available("fast_vlm"), reason="fast_vlm needs timm")
def test_remote_code_model_without_image_token_names_the_families(tmp_path, tiny_dirs, monkeypatch):
    from transformers import AutoProcessor, Qwen2Config, Qwen2ForCausalLM

    checkpoint = remote_code_checkpoint(tmp_path / "my-vlm")
    tiny_processor = AutoProcessor.from_pretrained(tiny_dirs["fast_vlm"])
    text_model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tiny_processor.tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    monkeypatch.setattr(base.AutoProcessor, "from_pretrained", lambda *a, **k: tiny_processor)
    monkeypatch.setattr(base.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: text_model)
    with pytest.raises(
        ModelError, match=r"'my-vlm'.*no image_token_id.*supported families: .*fast_vlm"
    ) as error:
        load_model("my-vlm", {**entry(checkpoint, "fast_vlm"), "trust_remote_code": True})
    assert "\n" not in str(error.value)


def phi4_with_vision_lora(tmp_path: Path, tiny_dirs) -> Path:
    """The tiny Phi-4-multimodal with a random LoRA in its vision-lora subfolder."""
    peft = pytest.importorskip("peft")
    checkpoint = tmp_path / "phi4"
    shutil.copytree(tiny_dirs["phi4_multimodal"], checkpoint)
    lora = peft.get_peft_model(
        load_model("base", entry(checkpoint, "phi4_multimodal")).model,
        peft.LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(checkpoint / "vision-lora")
    return checkpoint


def test_phi4_multimodal_loads_and_activates_its_vision_lora(tmp_path, tiny_dirs):
    """As the model card prescribes, the vision-lora subfolder is loaded and set active."""
    checkpoint = phi4_with_vision_lora(tmp_path, tiny_dirs)
    plain = load_model("plain", entry(tiny_dirs["phi4_multimodal"], "phi4_multimodal"))
    with_lora = load_model("lora", entry(checkpoint, "phi4_multimodal"))
    assert with_lora.model.active_adapters() == ["vision"]
    inputs = with_lora.inputs([drawing((64, 64), (200, 0, 0))], ["a cat"])
    with torch.inference_mode():
        assert not torch.allclose(
            with_lora.forward(inputs).logits, plain.forward(inputs).logits, atol=1e-4
        )


# ------------------------------------------------------------------ family: auto, unsupported


@pytest.mark.parametrize("family", ["llava", "qwen3_vl", "kosmos2", "paligemma"])
def test_family_auto_takes_the_family_of_the_model_type(tiny_dirs, family):
    if family not in tiny_dirs:
        pytest.skip("not built")
    loaded = load_model("m", {**entry(tiny_dirs[family], family), "family": "auto"})
    assert type(loaded) is FAMILIES[family]


def test_family_auto_of_apples_fastvlm_is_its_layout(tiny_dirs):
    if APPLE not in tiny_dirs:
        pytest.skip("not built")
    from vlprobe.models.fast_vlm import AppleFastVlmAdapter

    loaded = load_model("m", {**entry(tiny_dirs[APPLE], APPLE), "family": "auto"})
    assert type(loaded) is AppleFastVlmAdapter


def unsupported_checkpoint(path: Path, model_type: str) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


@pytest.mark.parametrize("family", ["auto", "llava"])
def test_an_unsupported_type_fails_before_any_weights_load(tmp_path, monkeypatch, family):
    from vlprobe.models.support import UNSUPPORTED

    checkpoint = unsupported_checkpoint(tmp_path / "mllama", "mllama")
    for loader in (base.AutoModelForImageTextToText, base.AutoModelForCausalLM, base.AutoProcessor):
        monkeypatch.setattr(loader, "from_pretrained", None)  # any load would fail
    with pytest.raises(ModelError) as error:
        load_model("llama-vision", {"family": family, "hf_id": str(checkpoint), "num_layers": 2})
    assert str(error.value) == (
        f"model 'llama-vision': {checkpoint} has model_type 'mllama', which vlprobe cannot "
        f"probe: {UNSUPPORTED['mllama']}"
    )


@pytest.mark.parametrize("family", ["auto", "blip_2", "instructblip"])
def test_blip_with_flan_t5_is_refused_before_any_weights_load(tmp_path, monkeypatch, family):
    """BLIP-2's and InstructBLIP's Flan-T5 checkpoints are encoder-decoder: one line naming
    the model and why."""
    model_type = "instructblip" if family == "instructblip" else "blip-2"
    checkpoint = tmp_path / "blip2-flan-t5"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(
        json.dumps({"model_type": model_type, "text_config": {"model_type": "t5"}})
    )
    for loader in (base.AutoModelForImageTextToText, base.AutoModelForCausalLM, base.AutoProcessor):
        monkeypatch.setattr(loader, "from_pretrained", None)  # any load would fail
    with pytest.raises(ModelError) as error:
        load_model("flan", {"family": family, "hf_id": str(checkpoint), "num_layers": 2})
    message = str(error.value)
    assert message.startswith(f"model 'flan': {checkpoint} is a {model_type} checkpoint with the ")
    assert "encoder-decoder language model 't5'" in message and "\n" not in message


@pytest.mark.parametrize("family", ["auto", "step3p7"])
def test_step3p7_with_bidirectional_text_attention_is_refused(tmp_path, monkeypatch, family):
    """Step-3.7's decoder is causal unless its text config turns on Gemma-3's embedding-model
    switch, which makes every token attend to the whole text: refused before any weights load."""
    checkpoint = tmp_path / "step3p7-bidirectional"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(
        json.dumps({"model_type": "step3p7", "text_config": {"use_bidirectional_attention": True}})
    )
    for loader in (base.AutoModelForImageTextToText, base.AutoProcessor):
        monkeypatch.setattr(loader, "from_pretrained", None)  # any load would fail
    with pytest.raises(ModelError) as error:
        load_model("s", {"family": family, "hf_id": str(checkpoint), "num_layers": 2})
    assert str(error.value).startswith(
        f"model 's': {checkpoint} sets use_bidirectional_attention in its text config"
    )
    assert "\n" not in str(error.value)


def test_family_auto_of_a_type_that_is_not_image_text_to_text_is_one_line(tmp_path):
    checkpoint = unsupported_checkpoint(tmp_path / "bert", "bert")
    with pytest.raises(ModelError) as error:
        load_model("b", {"family": "auto", "hf_id": str(checkpoint), "num_layers": 2})
    assert str(error.value).startswith(
        f"model 'b': {checkpoint}: family auto: model_type 'bert' is not an image-text-to-text"
    )
    assert "\n" not in str(error.value)


def test_family_auto_of_a_type_without_a_family_class_is_the_generic_adapter(caplog, monkeypatch):
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from vlprobe.models import FAMILY_OF_MODEL_TYPE, AutoFamily
    from vlprobe.models.base import GenericAdapter
    from vlprobe.models.support import UNSUPPORTED

    # an image-text-to-text type that has neither a family nor a reason against it: every one
    # of transformers 5.23 has one or the other, so a made-up one
    model_type = "vlprobe_unknown_vlm"
    monkeypatch.setitem(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, model_type, "UnknownVLM")
    assert model_type not in {*FAMILY_OF_MODEL_TYPE, *UNSUPPORTED}
    with caplog.at_level("WARNING"):
        adapter = AutoFamily.for_model_type(model_type)
    assert issubclass(adapter, GenericAdapter) and adapter.family == model_type
    assert "untested" in caplog.text


def test_every_unsupported_type_is_an_image_text_to_text_type():
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from vlprobe.models import FAMILY_OF_MODEL_TYPE
    from vlprobe.models.support import UNSUPPORTED

    assert set(UNSUPPORTED) <= set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    assert not set(UNSUPPORTED) & set(FAMILY_OF_MODEL_TYPE)
