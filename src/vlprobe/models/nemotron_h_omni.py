"""Nemotron 3 Nano Omni: a RADIO vision tower at the image's own aspect ratio, a 2 x 2 pixel
shuffle and MLP projector, and a Nemotron-H decoder (Mamba-2 layers, a few attention layers and
mixture-of-experts layers); audio and video enter through their own towers, unused here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    NemotronH_Omni_Reasoning_V3,
    NemotronH_Omni_Reasoning_V3_Config,
    NemotronH_Omni_Reasoning_V3ImageProcessor,
    NemotronH_Omni_Reasoning_V3Processor,
    NemotronH_Omni_Reasoning_V3VideoProcessor,
    ParakeetFeatureExtractor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 0.5  # pixel shuffle: one token per 2 x 2 patches


class NemotronHOmniAdapter(LoadedVLM):
    """Nemotron 3 Nano Omni checkpoints (model_type ``nemotron_h_omni``,
    ``nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16``), image and text only. The
    placeholder ``<image>`` expands to ``<img>``, one ``<image>`` per merged patch, ``</img>``.
    The decoder is ``language_model.model``, whose final norm is ``norm_f``; its Mamba-2 layers'
    recurrent states are cached with the attention layers' keys and values, so a prefix is
    reused like any other.

    Tiny keys: ``min_image_patches`` (16) and ``max_image_patches`` (64) bound the 16 x 16
    patches of an image (four per image token).
    """

    family = "nemotron_h_omni"
    language_model_path = "language_model.model"
    final_norm_name = "norm_f"
    special_tokens = SpecialTokens(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        extra=(
            "<|im_start|>",
            "<|im_end|>",
            "<image>",
            "<img>",
            "</img>",
            "<video>",
            "<so_embedding>",
            "<so_start>",
            "<so_end>",
        ),
    )
    tiny_defaults = {"min_image_patches": 16, "max_image_patches": 64}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[NemotronH_Omni_Reasoning_V3, NemotronH_Omni_Reasoning_V3Processor]:
        image_processor = NemotronH_Omni_Reasoning_V3ImageProcessor(
            patch_size=PATCH_SIZE,
            downsample_ratio=DOWNSAMPLE_RATIO,
            min_num_patches=spec["min_image_patches"],
            max_num_patches=spec["max_image_patches"],
        )
        processor = NemotronH_Omni_Reasoning_V3Processor(
            image_processor=image_processor,
            # required by the processor; unused here
            video_processor=NemotronH_Omni_Reasoning_V3VideoProcessor(),
            feature_extractor=ParakeetFeatureExtractor(),
            tokenizer=tokenizer,
        )
        hidden, heads = spec["hidden_size"], spec["num_attention_heads"]
        text = text_config_kwargs(tokenizer, spec)
        layers = text.pop("num_hidden_layers")
        # the real stack's kinds in order: Mamba-2, mixture of experts, attention, ...
        kinds = ("mamba", "moe", "attention")
        config = NemotronH_Omni_Reasoning_V3_Config(
            vision_config={
                "model_type": "radio",
                "hidden_size": spec["vision_hidden_size"],
                "num_hidden_layers": spec["vision_layers"],
                "num_attention_heads": spec["vision_attention_heads"],
                "mlp_ratio": 2.0,
                "patch_size": PATCH_SIZE,
                "image_size": 64,
                "max_img_size": 256,
                "video_temporal_patch_size": 2,
            },
            text_config={
                "model_type": "nemotron_h",
                **text,
                "layers_block_type": [kinds[i % len(kinds)] for i in range(layers)],
                "head_dim": hidden // heads,
                "mamba_num_heads": 4,
                "mamba_head_dim": hidden // 4,
                "ssm_state_size": 16,
                "n_groups": 1,
                "chunk_size": 16,
                "use_mamba_kernels": False,  # the CUDA kernels are not needed on tiny models
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": spec["intermediate_size"] // 2,
                "moe_shared_expert_intermediate_size": spec["intermediate_size"] // 2,
            },
            audio_config=None,  # no sound tower: image and text only
            downsample_ratio=DOWNSAMPLE_RATIO,
            vision_hidden_size=spec["vision_hidden_size"],
            projector_hidden_size=2 * hidden,
            video_temporal_patch_size=2,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
            audio_token_id=tokenizer.convert_tokens_to_ids("<so_embedding>"),
        )
        return NemotronH_Omni_Reasoning_V3(config), processor
