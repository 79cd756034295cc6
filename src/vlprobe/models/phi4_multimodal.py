"""Phi-4-multimodal: a SigLIP image encoder over a global view and crops, an MLP projector and a
Phi-3-style decoder that reads images with a vision LoRA active."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForCausalLM,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.models.phi4_multimodal.modeling_phi4_multimodal import (
    Phi4MultimodalVisionAttention,
)
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from vlprobe.models.base import (
    LoadedVLM,
    require_packages,
    text_config_kwargs,
    vision_config_kwargs,
)
from vlprobe.models.tiny import SpecialTokens

log = logging.getLogger(__name__)

# The image processor counts 256 + 16 tokens for the global view: it assumes the real encoder's
# 448-pixel crops and 14-pixel patches, which tiny models therefore keep.
CROP_SIZE = 448
PATCH_SIZE = 14
MAX_CROPS = 4  # the real processor allows 36; a tiny model needs few
VISION_LORA = "vision-lora"  # the checkpoint's subfolder with the vision adapter
AUDIO_TINY = {  # the audio encoder is built with the model; tiny and unused
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_blocks": 1,
    "num_attention_heads": 2,
    "nemo_conv_channels": 32,
    "depthwise_separable_out_channel": 32,
    "ext_pw_out_channel": 32,
}


class Phi4MultimodalAdapter(LoadedVLM):
    """Phi-4-multimodal checkpoints in transformers' format (model_type ``phi4_multimodal``).

    As the model card prescribes for images, the checkpoint's ``vision-lora`` adapter is loaded
    and set active (this needs peft); a local checkpoint without that folder (a tiny model)
    runs without it. The decoder is ``model`` itself, and the id of the image tokens is in the
    vision config. Nothing follows the image tokens in the text, so an empty prompt leaves the
    image at the end and its image takes the plain path.

    No tiny keys of its own: crops are 448 pixels, so an image gives at least 545 tokens.
    """

    family = "phi4_multimodal"
    language_model_path = "model"
    auto_model_class = AutoModelForCausalLM  # not among the image-text-to-text classes
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=("<|user|>", "<|assistant|>", "<|end|>"),
        named={"image_token": "<|image|>", "audio_token": "<|audio|>"},
    )
    tiny_chat_template = "phi4_multimodal.jinja"

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int:
        return model.config.vision_config.image_token_id

    @classmethod
    def prepare(
        cls,
        name: str,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        hf_id: str,
        source: Mapping[str, Any],
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        if Path(hf_id).is_dir() and not (Path(hf_id) / VISION_LORA).is_dir():
            log.warning("%s: %s has no %s; no vision LoRA is active", name, hf_id, VISION_LORA)
        else:
            require_packages(f"model {name!r}", ["peft"], f"phi4_multimodal's {VISION_LORA}")
            model.load_adapter(
                hf_id,
                adapter_name="vision",
                adapter_kwargs={"subfolder": VISION_LORA, "revision": source["revision"]},
            )
            model.set_adapter("vision")
        # The image encoder is a SigLIP ViT, bidirectional, but transformers marks its attention
        # causal: SDPA then attends causally whenever no crop in the batch has padding (no
        # mask), and bidirectionally otherwise, so an image's features depended on the other
        # images of its batch. Bidirectional always, as the encoder was trained.
        for module in model.modules():
            if isinstance(module, Phi4MultimodalVisionAttention):
                module.is_causal = False
        # transformers installs its output-capturing hooks lazily, per model: if the image
        # encoder (which always captures one of its layers) comes first, a later
        # output_hidden_states=True of the whole model loses the encoder's states and fails;
        # installing the whole model's hooks first keeps both right
        maybe_install_capturing_hooks(model.model)
        return model, processor

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Phi4MultimodalForCausalLM, Phi4MultimodalProcessor]:
        processor = Phi4MultimodalProcessor(
            image_processor=Phi4MultimodalImageProcessor(
                size={"height": CROP_SIZE, "width": CROP_SIZE},
                patch_size=PATCH_SIZE,
                dynamic_hd=MAX_CROPS,
            ),
            audio_processor=Phi4MultimodalFeatureExtractor(),  # required by the processor
            tokenizer=tokenizer,
        )
        config = Phi4MultimodalConfig(
            **text_config_kwargs(tokenizer, spec),
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": CROP_SIZE,
                "crop_size": CROP_SIZE,
                "patch_size": PATCH_SIZE,
                "image_token_id": tokenizer.image_token_id,
            },
            audio_config={**AUDIO_TINY, "audio_token_id": tokenizer.audio_token_id},
        )
        return Phi4MultimodalForCausalLM(config), processor
