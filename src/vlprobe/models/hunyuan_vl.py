"""HunYuanVL (Tencent's HunyuanOCR): a native-resolution ViT whose convolutional 2 x 2 merger
appends a newline feature to each row and begin/end features to the image, and a dense Hunyuan
decoder with multi-axis rotary positions (XD-RoPE: sequence, width, height, image index)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    BatchFeature,
    HunYuanVLConfig,
    HunYuanVLForConditionalGeneration,
    HunYuanVLImageProcessor,
    HunYuanVLProcessor,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)
from transformers.utils import ModelOutput

from vlprobe.models.base import (
    LoadedVLM,
    image_text_of_template,
    text_config_kwargs,
    vision_config_kwargs,
)
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 16  # one image token per 32 x 32 pixels, plus one per row and two per image
MERGE_SIZE = 2
# the real checkpoints' rotary axes (sequence, width, height, image index), each a quarter
ROPE_AXES = 4


def enclosed_image_placeholder(processor: ProcessorMixin, image_token: str) -> str:
    """What the chat template writes for an image part; without a template, the image token
    between the processor's image start and end tokens, as the checkpoints' templates write it."""
    enclosed = processor.image_start_token + image_token + processor.image_end_token
    return image_text_of_template(processor, image_token) or enclosed


class HunYuanVLAdapter(LoadedVLM):
    """HunYuanVL checkpoints (model_type ``hunyuan_vl``, ``tencent/HunyuanOCR``).

    The processor takes the image only as ``<｜hy_place▁holder▁no▁100｜>`` (start), the image
    token and ``...no▁101｜>`` (end), as the chat template writes it; in raw format, without a
    template, vlprobe writes that itself. The processor adds no special tokens (its default), so
    neither do vlprobe's own tokenisations. Prefix reuse is valid: the decoder is causal and the
    image's positions (from the model's ``get_rope_index``) do not depend on the text after it;
    text tokens have the same position on every axis.

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64) bound the merged 32 x 32
    patches per image through the image processor's pixel limits. The tiny model has no chat
    template (the checkpoint's is not available offline), so it runs in raw format; its rotary
    frequencies are the default ones (the checkpoint's are NTK-alpha scaled, same positions).
    """

    family = "hunyuan_vl"
    special_tokens = SpecialTokens(
        bos="<｜hy_begin▁of▁sentence｜>",
        eos="<｜hy_end▁of▁sentence｜>",
        pad="<｜hy_▁pad▁｜>",
        extra=("<｜hy_User｜>", "<｜hy_Assistant｜>", "<｜hy_place▁holder▁no▁3｜>"),
        # the processor reads these from the tokenizer (tokenizer.image_token, ...)
        named={
            "image_start_token": "<｜hy_place▁holder▁no▁100｜>",
            "image_end_token": "<｜hy_place▁holder▁no▁101｜>",
            "image_token": "<｜hy_place▁holder▁no▁102｜>",
        },
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}

    @functools.cached_property
    def image_placeholder(self) -> str:
        # the processor refuses an image token that its start and end tokens do not enclose
        return enclosed_image_placeholder(self.processor, self.image_token)

    @functools.cached_property
    def text_kwargs(self) -> dict[str, Any]:
        # the processor's default: the chat template writes BOS itself, raw prompts have none
        return {"add_special_tokens": False}

    @functools.cached_property
    def rope_index_function(self) -> Any:
        # the model's get_rope_index numbers images across the batch (its image-index axis
        # counts on from row to row); its docstring and a batch of one count per sequence
        return self.rope_index_per_sequence

    def rope_index_per_sequence(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary positions and rope deltas of each row alone (one image per row)."""
        rows = [
            self.model.model.get_rope_index(
                input_ids[row : row + 1],
                mm_token_type_ids[row : row + 1],
                image_grid_thw=image_grid_thw[row : row + 1],
                attention_mask=attention_mask[row : row + 1],
            )
            for row in range(len(input_ids))
        ]
        return torch.cat([p for p, _ in rows], dim=1), torch.cat([d for _, d in rows])

    def forward(self, inputs: BatchFeature, **kwargs: Any) -> ModelOutput:
        # positions per sequence, as in a reused prefix (the model's own number images batch-wide)
        names = inspect.signature(self.rope_index_per_sequence).parameters
        position_ids, _ = self.rope_index_per_sequence(**{name: inputs[name] for name in names})
        return super().forward(inputs, position_ids=position_ids, **kwargs)

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[HunYuanVLForConditionalGeneration, HunYuanVLProcessor]:
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        processor = HunYuanVLProcessor(
            image_processor=HunYuanVLImageProcessor(
                min_pixels=spec["min_image_tokens"] * pixels_per_token,
                max_pixels=spec["max_image_tokens"] * pixels_per_token,
            ),
            tokenizer=tokenizer,
        )
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        config = HunYuanVLConfig(
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": head_dim,
                "rope_parameters": {
                    "rope_type": "default",
                    "mrope_section": [head_dim // 2 // ROPE_AXES] * ROPE_AXES,
                },
            },
            vision_config={
                **vision_config_kwargs(spec),
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
                # a 4 x 4 grid of learned positions, resampled to each grid (real: 128 x 128)
                "max_image_size": 4 * PATCH_SIZE,
                "out_hidden_size": spec["hidden_size"],
            },
            image_token_id=tokenizer.image_token_id,
            im_start_id=tokenizer.image_start_token_id,
            im_end_id=tokenizer.image_end_token_id,
        )
        return HunYuanVLForConditionalGeneration(config), processor
