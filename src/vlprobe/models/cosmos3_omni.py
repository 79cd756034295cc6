"""Cosmos3 Omni's Reasoner: Qwen3-VL's architecture (vision tower with deepstack, Qwen3 decoder
with interleaved M-RoPE) under its own model type. The unified checkpoints' Generator tower,
sound and action towers are not part of the model class: their weights are dropped on load."""

from __future__ import annotations

from transformers import Cosmos3OmniConfig, Cosmos3OmniForConditionalGeneration

from vlprobe.models.qwen3_vl import Qwen3VLAdapter


class Cosmos3OmniAdapter(Qwen3VLAdapter):
    """Cosmos3 Omni checkpoints (model_type ``cosmos3_omni``, ``nvidia/Cosmos3-Nano``): the
    Reasoner tower only, which transformers' ``Cosmos3OmniForConditionalGeneration`` builds as a
    Qwen3-VL (image, video and text in; its audio is the Generator's output and input, absent
    from this class, so image + text probing sees the whole Reasoner). The checkpoints' processor
    is Qwen3-VL's; placeholder, M-RoPE positions (``get_rope_index``) and causal prefix reuse as
    for ``qwen3_vl``, and deepstack likewise: hidden state ``i`` is the input of decoder layer
    ``i``, the deepstack features included at the image tokens of the first layers. Only the
    config and model classes differ; the tiny tokenizer's tokens are Qwen2-VL's, which the
    config's default ids name (the checkpoint's tokenizer was not read here).

    Tiny keys as for ``qwen3_vl``.
    """

    family = "cosmos3_omni"
    config_class = Cosmos3OmniConfig
    model_class = Cosmos3OmniForConditionalGeneration
