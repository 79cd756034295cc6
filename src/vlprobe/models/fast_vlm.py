"""FastVLM: a FastViTHD (hybrid convolutional) vision encoder from timm, a two-layer projector and
a Qwen2 decoder; LLaVA's processor and image placeholder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import (
    CLIPImageProcessor,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.tiny import SpecialTokens

# the tiny encoder's stem and two downsampling stages shrink an image 16-fold per side (the real
# one 64-fold: 1024 pixels give 16 x 16 tokens)
DOWNSAMPLING = 16


class FastVlmAdapter(LlavaAdapter):
    """FastVLM checkpoints converted to transformers (model_type ``fast_vlm``), and Apple's own
    (``apple/FastVLM-*``, model_type ``llava_qwen2``) behind ``trust_remote_code: true``.

    The remote-code checkpoints load through ``AutoModelForCausalLM`` and their own processor;
    their decoder is found through ``get_decoder()``. They can be probed only if their
    processor expands the image into image tokens that the tokenizer knows (one per feature);
    otherwise loading stops with the no-image-token error.

    The vision tower needs timm. Tiny key: ``image_size`` (64), the encoder resolution; an image
    gives ``(image_size / 16) ** 2`` tokens.
    """

    family = "fast_vlm"
    special_tokens = SpecialTokens(
        eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>", "<image>")
    )
    tiny_defaults = {"image_size": 64}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[FastVlmForConditionalGeneration, LlavaProcessor]:
        size = spec["image_size"]
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            tokenizer=tokenizer,
            patch_size=DOWNSAMPLING,  # pixels per image token along a side
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
        )
        width = spec["vision_hidden_size"]
        stages = 3
        config = FastVlmConfig(
            # timm's fastvit_mci3 (the real encoder's architecture) shrunk: one block per stage,
            # repmixer blocks only; its final convolution doubles the last stage's channels
            vision_config={
                "architecture": "fastvit_mci3",
                "hidden_size": width,
                "do_pooling": True,
                "global_pool": "avg",
                "model_args": {
                    "inference_mode": True,
                    "layers": (1,) * stages,
                    "embed_dims": (width // 4, width // 2, width // 2),
                    "mlp_ratios": (2,) * stages,
                    "se_downsamples": (False,) * stages,
                    "downsamples": (False, True, True),
                    "pos_embs": (None,) * stages,
                    "token_mixers": ("repmixer",) * stages,
                    "lkc_use_act": True,
                    "stem_use_scale_branch": False,
                },
            },
            text_config=Qwen2Config(**text_config_kwargs(tokenizer, spec)).to_dict(),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=(size // DOWNSAMPLING) ** 2,
        )
        model = FastVlmForConditionalGeneration(config)
        # transformers draws convolution weights with std 0.02, which (untrained, without the
        # real model's normalisation statistics) shrinks the image to nothing within a few
        # layers; a tiny model needs images to matter, so draw them variance-preserving
        for module in model.model.vision_tower.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
        return model, processor
