"""Model registry: one adapter class per family, a loader for config entries, tiny models.

A config entry (``models:`` in config.yaml) names a ``family``; :data:`FAMILIES` maps it to the
adapter class that knows the family's processor, image placeholder and decoder layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from vlprobe.models.aria import AriaAdapter
from vlprobe.models.aya_vision import AyaVisionAdapter
from vlprobe.models.base import LoadedVLM, ModelError, NoImageTokenError, generic_adapter
from vlprobe.models.blip_2 import Blip2Adapter
from vlprobe.models.chameleon import ChameleonAdapter
from vlprobe.models.cohere2_vision import Cohere2VisionAdapter
from vlprobe.models.cohere_compass import CohereCompassAdapter
from vlprobe.models.cosmos3_edge import Cosmos3EdgeAdapter
from vlprobe.models.cosmos3_omni import Cosmos3OmniAdapter
from vlprobe.models.deepseek_ocr2 import DeepseekOcr2Adapter
from vlprobe.models.deepseek_vl import DeepseekVLAdapter
from vlprobe.models.deepseek_vl_hybrid import DeepseekVLHybridAdapter
from vlprobe.models.dots3_note import Dots3NoteAdapter
from vlprobe.models.emu3 import Emu3Adapter
from vlprobe.models.ernie4_5_vl_moe import Ernie4_5_VLMoeAdapter
from vlprobe.models.exaone4_5 import Exaone4_5Adapter
from vlprobe.models.fast_vlm import FastVlmAdapter
from vlprobe.models.fuyu import FuyuAdapter
from vlprobe.models.gemma3 import Gemma3Adapter
from vlprobe.models.gemma3n import Gemma3nAdapter
from vlprobe.models.gemma4 import Gemma4Adapter
from vlprobe.models.gemma4_unified import Gemma4UnifiedAdapter
from vlprobe.models.glm4v import Glm4vAdapter, Glm4vMoeAdapter
from vlprobe.models.glm5_next import Glm5NextAdapter
from vlprobe.models.glm46v import Glm46VAdapter
from vlprobe.models.glm_ocr import GlmOcrAdapter
from vlprobe.models.glmga import GlmgaAdapter
from vlprobe.models.got_ocr2 import GotOcr2Adapter
from vlprobe.models.granite4_vision import Granite4VisionAdapter
from vlprobe.models.granite_docling import GraniteDoclingAdapter
from vlprobe.models.hunyuan_vl import HunYuanVLAdapter
from vlprobe.models.hyperclovax_vision_v2 import HyperCLOVAXVisionV2Adapter
from vlprobe.models.idefics2 import Idefics2Adapter
from vlprobe.models.idefics3 import Idefics3Adapter
from vlprobe.models.inkling import InklingAdapter
from vlprobe.models.inkling2 import Inkling2Adapter
from vlprobe.models.instructblip import InstructBlipAdapter
from vlprobe.models.internvl import InternVLAdapter
from vlprobe.models.janus import JanusAdapter
from vlprobe.models.kimi_k25 import KimiK25Adapter
from vlprobe.models.kosmos2 import Kosmos2Adapter
from vlprobe.models.kosmos2_5 import Kosmos2_5Adapter
from vlprobe.models.lfm2_vl import Lfm2VlAdapter
from vlprobe.models.lfm3_vl import Lfm3VlAdapter
from vlprobe.models.lighton_ocr import LightOnOcrAdapter
from vlprobe.models.llama4 import Llama4Adapter
from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.llava_next import LlavaNextAdapter
from vlprobe.models.llava_next_video import LlavaNextVideoAdapter
from vlprobe.models.llava_onevision import LlavaOnevisionAdapter
from vlprobe.models.minicpm_ocr import MiniCPMOcrAdapter
from vlprobe.models.minicpmv4_6 import MiniCPMV4_6Adapter
from vlprobe.models.minicpmv4_7 import MiniCPMV4_7Adapter
from vlprobe.models.minimax_m3_vl import MiniMaxM3VLAdapter
from vlprobe.models.mistral3 import Mistral3Adapter
from vlprobe.models.mistral4 import Mistral4Adapter
from vlprobe.models.mistral_large4 import MistralLarge4Adapter
from vlprobe.models.molmo2 import Molmo2Adapter
from vlprobe.models.muse_glimmer import MuseGlimmerAdapter
from vlprobe.models.muse_spark import MuseSparkAdapter
from vlprobe.models.nemotron_h_omni import NemotronHOmniAdapter
from vlprobe.models.ovis2 import Ovis2Adapter
from vlprobe.models.paddleocr_vl import PaddleOCRVLAdapter
from vlprobe.models.paligemma import PaliGemmaAdapter
from vlprobe.models.perception_lm import PerceptionLMAdapter
from vlprobe.models.phi4_multimodal import Phi4MultimodalAdapter
from vlprobe.models.pp_chart2table import PPChart2TableAdapter
from vlprobe.models.qianfan_ocr import QianfanOCRAdapter
from vlprobe.models.qwen2_5_omni_thinker import Qwen2_5OmniThinkerAdapter
from vlprobe.models.qwen2_5_vl import Qwen2_5VLAdapter
from vlprobe.models.qwen2_vl import Qwen2VLAdapter
from vlprobe.models.qwen3_5 import Qwen3_5Adapter, Qwen3_5MoeAdapter
from vlprobe.models.qwen3_omni_moe_thinker import Qwen3OmniMoeThinkerAdapter
from vlprobe.models.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from vlprobe.models.qwen4_exp import Qwen4ExpAdapter
from vlprobe.models.shieldgemma2 import ShieldGemma2Adapter
from vlprobe.models.smolvlm import SmolVLMAdapter
from vlprobe.models.step3p7 import Step3p7Adapter
from vlprobe.models.unlimited_ocr import UnlimitedOcrAdapter
from vlprobe.models.video_llama_3 import VideoLlama3Adapter
from vlprobe.models.video_llava import VideoLlavaAdapter
from vlprobe.models.vipllava import VipLlavaAdapter

FAMILIES: dict[str, type[LoadedVLM]] = {
    adapter.family: adapter
    for adapter in (
        Qwen2VLAdapter,
        Qwen2_5VLAdapter,
        LlavaAdapter,
        LlavaOnevisionAdapter,
        Idefics3Adapter,
        Gemma3Adapter,
        FastVlmAdapter,
        Kosmos2Adapter,
        InternVLAdapter,
        Phi4MultimodalAdapter,
        MiniCPMV4_6Adapter,
        LlavaNextAdapter,
        Mistral3Adapter,
        VipLlavaAdapter,
        AyaVisionAdapter,
        PerceptionLMAdapter,
        Qwen3VLAdapter,
        Glm4vAdapter,
        Idefics2Adapter,
        SmolVLMAdapter,
        PaliGemmaAdapter,
        Emu3Adapter,
        ChameleonAdapter,
        Qwen3VLMoeAdapter,
        Glm4vMoeAdapter,
        Lfm2VlAdapter,
        JanusAdapter,
        Molmo2Adapter,
        Gemma3nAdapter,
        Gemma4Adapter,
        LlavaNextVideoAdapter,
        Cohere2VisionAdapter,
        DeepseekVLAdapter,
        DeepseekVLHybridAdapter,
        Ovis2Adapter,
        AriaAdapter,
        Lfm3VlAdapter,
        MiniCPMV4_7Adapter,
        Glm46VAdapter,
        LightOnOcrAdapter,
        Granite4VisionAdapter,
        Qwen3_5Adapter,
        Qwen3_5MoeAdapter,
        ShieldGemma2Adapter,
        Gemma4UnifiedAdapter,
        VideoLlavaAdapter,
        VideoLlama3Adapter,
        Qwen2_5OmniThinkerAdapter,
        Qwen3OmniMoeThinkerAdapter,
        Mistral4Adapter,
        MistralLarge4Adapter,
        KimiK25Adapter,
        Exaone4_5Adapter,
        NemotronHOmniAdapter,
        PaddleOCRVLAdapter,
        HunYuanVLAdapter,
        Ernie4_5_VLMoeAdapter,
        Llama4Adapter,
        GraniteDoclingAdapter,
        Blip2Adapter,
        InstructBlipAdapter,
        GlmOcrAdapter,
        MiniCPMOcrAdapter,
        QianfanOCRAdapter,
        HyperCLOVAXVisionV2Adapter,
        Cosmos3EdgeAdapter,
        UnlimitedOcrAdapter,
        Dots3NoteAdapter,
        GotOcr2Adapter,
        PPChart2TableAdapter,
        Kosmos2_5Adapter,
        FuyuAdapter,
        Cosmos3OmniAdapter,
        GlmgaAdapter,
        CohereCompassAdapter,
        MuseGlimmerAdapter,
        Step3p7Adapter,
        DeepseekOcr2Adapter,
        MiniMaxM3VLAdapter,
        Glm5NextAdapter,
        Qwen4ExpAdapter,
        Inkling2Adapter,
        InklingAdapter,
        MuseSparkAdapter,
    )
}

__all__ = [
    "AUTO",
    "FAMILY_OF_MODEL_TYPE",
    "AutoFamily",
    "CONFIG_FAMILIES",
    "FAMILIES",
    "LoadedVLM",
    "ModelError",
    "build_tiny_model",
    "family_adapter",
    "load_model",
]


# a config entry's `family: auto`: the adapter of the checkpoint's model_type
AUTO = "auto"
# what a config entry's `family` may be (the schema's enum)
CONFIG_FAMILIES = [*FAMILIES, AUTO]
# config.json model types -> family
FAMILY_OF_MODEL_TYPE: dict[str, str] = {
    model_type: family
    for family, adapter in FAMILIES.items()
    for model_type in (adapter.model_types or (family,))
}


def supported_families() -> str:
    return f"supported families: {', '.join(FAMILIES)}"


class AutoFamily(LoadedVLM):
    """``family: auto``: the family registered for the checkpoint's model_type; for another
    image-text-to-text type of transformers that is not known to be unsupported, the generic
    adapter (:class:`GenericAdapter`), with a warning that no tiny model of it is tested."""

    family = AUTO

    @classmethod
    def for_model_type(cls, model_type: str | None) -> type[LoadedVLM]:
        if model_type in FAMILY_OF_MODEL_TYPE:
            return FAMILIES[FAMILY_OF_MODEL_TYPE[model_type]].for_model_type(model_type)
        return generic_adapter(model_type)

    @classmethod
    def tiny_model_and_processor(cls, tokenizer, spec):  # noqa: ANN001, ANN206
        raise ModelError(f"tiny models need a named family; {supported_families()}")


def family_adapter(family: str, name: str | None = None) -> type[LoadedVLM]:
    """The adapter class of a family (``auto``: chosen by model_type when the checkpoint's
    config is read); an unknown family is named in a one-line error."""
    if family == AUTO:
        return AutoFamily
    if family not in FAMILIES:
        subject = f"model {name!r}: " if name else ""
        raise ModelError(f"{subject}unknown family {family!r}; {supported_families()}")
    return FAMILIES[family]


def load_model(
    name: str, entry: Mapping[str, Any], device: str | torch.device = "cpu"
) -> LoadedVLM:
    """Load the model of config entry ``name`` onto ``device``.

    ``entry`` keys: family, hf_id (hub id or local directory), revision, dtype, num_layers
    (checked against the checkpoint), attn_implementation (default sdpa), trust_remote_code.
    A checkpoint without an image token is not of any family: the error lists them.
    """
    try:
        return family_adapter(entry["family"], name).load(name, entry, device=device)
    except NoImageTokenError as err:
        raise ModelError(f"{err}; {supported_families()}") from err


def build_tiny_model(family: str, out_dir: str | os.PathLike, tiny: Mapping[str, Any]) -> None:
    """Build a tiny randomly initialised model of a family's real class, with its processor.

    The tokenizer is a byte-level BPE trained offline on a built-in corpus and carries the
    family's special tokens. Model and processor are saved with ``save_pretrained`` into
    ``out_dir`` (written whole or not at all), so :func:`load_model` reads it like a checkpoint.

    ``tiny`` keys (defaults in brackets): num_layers (required), hidden_size [64], seed [0],
    num_attention_heads [4], num_key_value_heads [2], intermediate_size [2 * hidden_size],
    vocab_size [1000, an upper bound], vision_hidden_size [32], vision_layers [2],
    vision_attention_heads [2]; and per family: qwen2_vl and qwen2_5_vl min_image_tokens [16],
    max_image_tokens [64]; gemma3 image_size [64], image_tokens [16]; image_size for llava
    [56], llava_onevision [28], idefics3 [64], fast_vlm [64], kosmos2 [28], internvl [56],
    minicpmv4_6 [112]. phi4_multimodal has no keys of its own (its crops are 448 pixels).
    The families added with the generic adapter document theirs in their class docstrings.
    """
    family_adapter(family).build_tiny(out_dir, tiny)
