"""MiniCPM-V 4.7: MiniCPM-V 4.6's encoder, mergers and Qwen3.5 decoder, with "canvas" M-RoPE:
each image's tokens (thumbnail and slices) get (temporal, height, width) positions on one canvas,
its markers and row newlines pinned to the canvas's corners and edges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    MiniCPMV4_7Config,
    MiniCPMV4_7ForConditionalGeneration,
    MiniCPMV4_7Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.minicpmv4_6 import MiniCPMV4_6Adapter


class MiniCPMV4_7Adapter(MiniCPMV4_6Adapter):
    """MiniCPM-V 4.7 checkpoints (model_type ``minicpmv4_7``, ``openbmb/MiniCPM-V-4.7-*``);
    4.6's tokens and placeholder. The canvas positions of a reused prefix come from the model's
    ``get_rope_index`` (its ``rope_deltas`` give the next text position), as for Qwen2-VL. The
    markers and newlines right after an image (the image's own line break included) are pinned
    to its canvas, so they belong to the prefix like the image's tokens.

    Tiny key: ``image_size`` (112), as for 4.6.
    """

    family = "minicpmv4_7"
    config_class = MiniCPMV4_7Config
    model_class = MiniCPMV4_7ForConditionalGeneration
    processor_class = MiniCPMV4_7Processor

    def image_bound_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # get_rope_index closes an image's span after the run of markers that follows its last
        # crop (MiniCPMV4_7Model._frame_end_idx): those positions come from the canvas
        config = self.model.config
        markers = [
            config.slice_start_id,
            config.slice_end_id,
            config.image_start_id,
            config.image_end_id,
            config.newline_id,
        ]
        mask = super().image_bound_mask(inputs)
        ids = inputs["input_ids"]
        is_marker = torch.isin(ids, torch.tensor(markers, device=ids.device))
        for position in range(1, mask.shape[1]):
            mask[:, position] |= mask[:, position - 1] & is_marker[:, position]
        return mask

    @classmethod
    def tiny_config_extras(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        # the marker ids that the canvas positions pin (the conversion script writes them)
        ids = tokenizer.convert_tokens_to_ids
        return {
            **super().tiny_config_extras(tokenizer, spec),
            "image_start_id": tokenizer.image_start_token_id,
            "image_end_id": tokenizer.image_end_token_id,
            "slice_start_id": tokenizer.slice_start_token_id,
            "slice_end_id": tokenizer.slice_end_token_id,
            "newline_id": ids(tokenizer.tokenize("\n"))[0],
        }
