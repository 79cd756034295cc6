"""Emu3 (the Emu line of Tao et al.'s Emu): a VQ-VAE turns the image into discrete codes, which
become ordinary tokens of one Llama-style decoder over text and image alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    DynamicCache,
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import ModelOutput

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

CODEBOOK = 64  # the VQ-VAE's codes, each a token "<|visual token NNNNNN|>" (the real one: 32768)
SPATIAL_FACTOR = 8  # pixels per code along a side, as in the real model
EOL = "<|extra_200|>"  # ends each row of image codes


class Emu3Adapter(LoadedVLM):
    """Emu3 checkpoints in transformers' format (model_type ``emu3``, ``BAAI/Emu3-Chat-hf``).

    The placeholder ``<image>`` expands to ``<|image start|>``, the code grid's size as text,
    ``<|image token|>``, one ``<image>`` per code (and per row end), ``<|extra_201|>`` and
    ``<|image end|>``; the model puts each image's VQ codes (as their visual tokens) in place
    of its ``<image>`` tokens, so those are the image tokens.

    Tiny keys: ``min_image_tokens`` (16), ``max_image_tokens`` (64) codes per image.
    """

    family = "emu3"
    special_tokens = SpecialTokens(
        bos="<|extra_203|>",
        eos="<|extra_204|>",
        pad="<|endoftext|>",
        extra=(EOL, *(f"<|visual token {code:06d}|>" for code in range(CODEBOOK))),
        named={
            "image_token": "<image>",
            "boi_token": "<|image start|>",
            "eoi_token": "<|image end|>",
            "image_wrapper_token": "<|image token|>",
            "eof_token": "<|extra_201|>",
        },
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    tiny_chat_template = "emu3.jinja"

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int:
        # the config has no image_token_id: its vocabulary map names the placeholder's
        return model.config.vocabulary_map["<image>"]

    def forward(self, inputs: Mapping[str, Any], **kwargs: Any) -> ModelOutput:
        return super().forward(self.encoded(inputs), **kwargs)

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        return super().forward_cached(self.encoded(inputs), cache, **kwargs)

    def encoded(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs with each image's codes (as tokens) in place of its ``<image>`` tokens.

        Each image is encoded at its own size: the processor pads a batch's images to the
        largest, and the VQ-VAE's convolutions would see that padding, so an image's codes
        would depend on the other images of its batch.
        """
        inputs = dict(inputs)
        pixels, sizes = inputs.pop("pixel_values", None), inputs.pop("image_sizes", None)
        if pixels is None:
            return inputs
        codes = [
            self.model.model.get_image_tokens(
                pixels[i : i + 1, :, :height, :width], sizes[i : i + 1]
            )
            for i, (height, width) in enumerate(sizes.tolist())
        ]
        input_ids = inputs["input_ids"].clone()
        input_ids[input_ids == self.image_token_id] = torch.cat(codes).to(input_ids)
        inputs["input_ids"] = input_ids
        return inputs

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Emu3ForConditionalGeneration, Emu3Processor]:
        area = SPATIAL_FACTOR**2
        processor = Emu3Processor(
            image_processor=Emu3ImageProcessor(
                min_pixels=spec["min_image_tokens"] * area,
                max_pixels=spec["max_image_tokens"] * area,
                spatial_factor=SPATIAL_FACTOR,
            ),
            tokenizer=tokenizer,
        )
        config = Emu3Config(
            text_config=text_config_kwargs(tokenizer, spec),
            vq_config={
                "codebook_size": CODEBOOK,
                "embed_dim": 4,
                "latent_channels": 4,
                "temporal_downsample_factor": 1,
                "base_channels": 32,  # GroupNorm needs 32 channels
                "channel_multiplier": [1, 1, 1, 1],  # three halvings: SPATIAL_FACTOR
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "hidden_size": 32,
            },
            vocabulary_map=tokenizer.get_vocab(),
        )
        return Emu3ForConditionalGeneration(config), processor
