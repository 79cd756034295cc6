"""Gemma-3n: a MobileNetV5 vision encoder (timm) whose multi-scale fusion gives a fixed grid of
soft tokens, an audio conformer (unused here: image and text only), and a Gemma-3n decoder with
AltUp (several parallel streams per token, of which one is computed on), per-layer token
embeddings and key/value sharing in its last layers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    DynamicCache,
    Gemma3nAudioFeatureExtractor,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipImageProcessor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

ENCODER = "mobilenetv5_300m_enc"  # the real checkpoints' timm architecture
# the real encoder's 84 blocks, narrowed to at least 8 channels each (its multi-query attention
# keeps its real head sizes: ~6M weights instead of 300M)
ENCODER_CHANNELS = 0.05
ENCODER_FEATURES = 2048  # timm's MobileNetV5 encoder always fuses its scales into 2048 channels
MODALITY_VOCAB = (
    2  # vision and audio token ids each (the real: 128): the end marker, the soft token
)


class Gemma3nAdapter(LoadedVLM):
    """Gemma-3n checkpoints (model_type ``gemma3n``, ``google/gemma-3n-E2B-it``); image and text
    only. The placeholder ``<image_soft_token>`` expands to two newlines, ``<start_of_image>``,
    a fixed number of ``<image_soft_token>`` (256 in the real checkpoints) and
    ``<end_of_image>``. The decoder is causal over the image (no bidirectional image block), so
    prefix reuse is valid; the shared keys and values of the last layers come from the earlier
    layers' full-length cache entries, as in the plain pass.

    Hidden states. Each decoder layer receives ``altup_num_inputs`` (4) streams per token
    ``[streams, batch, tokens, hidden]``: the layer computes attention and MLP on its prediction
    of the active stream (``altup_active_idx``, 0) and corrects all streams with the result;
    the other streams also receive the layer's per-layer-input (token embedding) signal.
    Hidden state ``i < num_layers`` is the active stream of decoder layer ``i``'s input: for
    ``i = 0`` the input embeddings (image features scattered in; the other streams are
    projections of it), for ``i > 0`` layer ``i - 1``'s corrected active stream.
    Hidden state ``num_layers`` is the final norm's output, of the streams' mean after their
    unembedding projections (what the LM head reads). ``forward(output_hidden_states=True)``
    returns these, not transformers' four-stream tensors (whose last entry precedes that norm).

    Tiny keys: ``image_size`` (64), the encoder resolution, and ``image_tokens`` (16), the soft
    tokens per image (a square number: the fusion's output grid).
    """

    family = "gemma3n"
    special_tokens = SpecialTokens(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        extra=("<start_of_turn>", "<end_of_turn>"),
        named={"boi_token": "<start_of_image>", "boa_token": "<start_of_audio>"},
        # the model reads token ids from the end of the text vocabulary on as vision tokens and
        # from there plus the vision vocabulary on as audio tokens (real: 262144 and 262272)
        appended={
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "eoa_token": "<end_of_audio>",
            "audio_token": "<audio_soft_token>",
        },
    )
    tiny_defaults = {"image_size": 64, "image_tokens": 16}
    tiny_chat_template = "gemma3n.jinja"
    requires = ("timm",)  # the MobileNetV5 vision tower

    @property
    def altup_active_idx(self) -> int:
        return self.model.config.get_text_config().altup_active_idx

    def layer_input_state(self, layer_input: torch.Tensor) -> torch.Tensor:
        # [streams, batch, tokens, hidden]: the active stream, the one the layer computes on
        return layer_input[self.altup_active_idx]

    def forward(self, inputs: Mapping[str, Any], **kwargs: Any) -> ModelOutput:
        if not kwargs.get("output_hidden_states"):
            return super().forward(self.encoded(inputs), **kwargs)
        final = []
        handle = self.final_norm.register_forward_hook(lambda m, a, out: final.append(out))
        try:
            output = super().forward(self.encoded(inputs), **kwargs)
        finally:
            handle.remove()
        states = output.hidden_states[: self.num_layers]  # the layers' four-stream inputs
        output.hidden_states = (*(self.layer_input_state(s) for s in states), final[0])
        return output

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> ModelOutput:
        return super().forward_cached(self.encoded(inputs), cache, **kwargs)

    def encoded(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs with each image's soft tokens computed alone, in place of its pixels.

        Batched, the MobileNetV5's convolutions differ from a lone image's by ~1e-6 (relative),
        which the AltUp streams amplify to ~2e-5 in the decoder's states; one image at a time,
        an image's states do not depend on the other images of its batch.
        """
        inputs = dict(inputs)
        pixels = inputs.pop("pixel_values", None)
        if pixels is None:
            return inputs
        features = [self.model.model.get_image_features(p[None]).pooler_output for p in pixels]
        image = BaseModelOutputWithPooling(pooler_output=torch.cat(features))
        inputs["mm_encoder_outputs"] = {"image": image}
        return inputs

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int:
        return model.config.image_token_id

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Gemma3nForConditionalGeneration, Gemma3nProcessor]:
        size, image_tokens = spec["image_size"], spec["image_tokens"]
        grid = math.isqrt(image_tokens)
        processor = Gemma3nProcessor(
            feature_extractor=Gemma3nAudioFeatureExtractor(),  # required; no audio is passed
            image_processor=SiglipImageProcessor(size={"height": size, "width": size}),
            tokenizer=tokenizer,
            image_seq_length=image_tokens,
        )
        text_vocab = tokenizer.convert_tokens_to_ids("<end_of_image>")  # the appended come last
        layers = spec["num_layers"]
        head_dim = spec["hidden_size"] // spec["num_attention_heads"]
        config = Gemma3nConfig(
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": head_dim,
                "vocab_size_per_layer_input": text_vocab,
                "hidden_size_per_layer_input": 16,
                "laurel_rank": 8,
                # the real pattern ends in a global layer; here two, the last sharing the
                # keys and values of the one before (the real E2B: its last 10 of 30 share)
                "layer_types": ["sliding_attention"] * (layers - 2) + ["full_attention"] * 2,
                "num_kv_shared_layers": 1,
            },
            vision_config={
                "architecture": ENCODER,
                "model_args": {
                    "channel_multiplier": ENCODER_CHANNELS,
                    "msfa_output_resolution": grid,  # the soft-token grid
                },
                "hidden_size": ENCODER_FEATURES,
                "vocab_size": MODALITY_VOCAB,
                "vocab_offset": text_vocab,
            },
            audio_config={
                "hidden_size": 32,
                "conf_num_attention_heads": 2,
                "conf_num_hidden_layers": 1,
                "sscp_conv_channel_size": [8, 4],
                "vocab_size": MODALITY_VOCAB,
                "vocab_offset": text_vocab + MODALITY_VOCAB,
            },
            vision_soft_tokens_per_image=image_tokens,
            **{
                f"{kind}_token_id": tokenizer.convert_tokens_to_ids(token)
                for kind, token in [
                    ("boi", "<start_of_image>"),
                    ("eoi", "<end_of_image>"),
                    ("image", "<image_soft_token>"),
                    ("boa", "<start_of_audio>"),
                    ("eoa", "<end_of_audio>"),
                    ("audio", "<audio_soft_token>"),
                ]
            },
        )
        return Gemma3nForConditionalGeneration(config), processor
