"""FastVLM: a FastViTHD (hybrid convolutional) vision encoder, a two-layer projector and a Qwen2
decoder; LLaVA's processor and image placeholder. Checkpoints converted to transformers, and
Apple's own with their remote code."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    DynamicCache,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlprobe.models.base import LoadedVLM, ModelError, text_config_kwargs
from vlprobe.models.llava import LlavaAdapter
from vlprobe.models.tiny import SpecialTokens

# the image placeholder that the adapter of Apple's checkpoints adds to their tokenizer
IMAGE_PLACEHOLDER = "<image>"
# the tiny encoder's stem and two downsampling stages shrink an image 16-fold per side (the real
# one 64-fold: 1024 pixels give 16 x 16 tokens)
DOWNSAMPLING = 16


class FastVlmAdapter(LlavaAdapter):
    """FastVLM checkpoints converted to transformers (model_type ``fast_vlm``); Apple's own
    (``apple/FastVLM-*``, model_type ``llava_qwen2``) take :class:`AppleFastVlmAdapter`.

    Tiny key: ``image_size`` (64), the encoder resolution; an image
    gives ``(image_size / 16) ** 2`` tokens.
    """

    family = "fast_vlm"
    special_tokens = SpecialTokens(
        eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>", "<image>")
    )
    tiny_defaults = {"image_size": 64}
    requires = ("timm",)  # the vision tower is transformers' TimmWrapper
    tiny_chat_template = "fast_vlm.jinja"  # not LLaVA-1.5's: a Qwen2 turn with a system prompt

    @classmethod
    def for_model_type(cls, model_type: str | None) -> type[LoadedVLM]:
        return AppleFastVlmAdapter if model_type == AppleFastVlmAdapter.model_type else cls

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


class AppleFastVlmAdapter(FastVlmAdapter):
    """Apple's own FastVLM checkpoints (``apple/FastVLM-*``, model_type ``llava_qwen2``): remote
    code, run only with ``trust_remote_code: true``, loaded through ``AutoModelForCausalLM``.

    Apple's model puts the image's features in place of one token id (-200) inside its own
    forward, and the checkpoint ships a tokenizer only: the image processor is the vision
    tower's (``get_vision_tower().image_processor``, as the model card uses it). So the adapter
    builds LLaVA's processor from that tokenizer, with :data:`IMAGE_PLACEHOLDER` added, and the
    tower's image processor, expanding an image into one placeholder per feature as the
    converted checkpoints do. Where the checkpoint's config says ``image_aspect_ratio: pad``
    (Apple's do), images are first padded to a square, as Apple's own inference code does;
    the model card's example crops them instead, losing what is near the sides.

    The adapter splices the features in itself: those of ``encode_images`` (tower and
    projector) replace the placeholders' embeddings, and the decoder (``get_model()``) runs on
    them, which is what the remote forward computes for a prompt with one image. The hooks on
    the decoder layers then see every image token, and the prefix of an image can be reused
    like any causal model's.
    """

    model_type = "llava_qwen2"
    language_model_path = "model"
    auto_model_class = AutoModelForCausalLM
    # the checkpoint's tokenizer carries Qwen2's text-only chat template; the model card renders
    # one user turn whose content is "<image>\n" + the prompt, the placeholder then replaced by
    # the image's features
    chat_turn_content = "text"

    @classmethod
    def load_processor(
        cls, name: str, hf_id: str, source: Mapping[str, Any]
    ) -> PreTrainedTokenizerBase:
        """The tokenizer only; the image processor comes with the vision tower (:meth:`prepare`)."""
        return AutoTokenizer.from_pretrained(hf_id, **source)

    @classmethod
    def prepare(
        cls,
        name: str,
        model: PreTrainedModel,
        processor: PreTrainedTokenizerBase,
        hf_id: str,
        source: Mapping[str, Any],
    ) -> tuple[PreTrainedModel, LlavaProcessor]:
        image_processor = model.get_vision_tower().image_processor
        if getattr(model.config, "image_aspect_ratio", None) == "pad":
            # LLaVA's "pad", as the checkpoint was trained: the image is padded to a square in
            # the mean colour before the tower's processing, so nothing at its sides is cropped
            # away; transformers' LLaVA image processor does the same
            image_processor = LlavaImageProcessor.from_dict(
                {**image_processor.to_dict(), "do_pad": True}
            )
        height, width = image_processor.crop_size["height"], image_processor.crop_size["width"]
        # the tower's downsampling is architecture, not config: count the features of one image
        # (on the model's device: a 1024-pixel image takes minutes on a CPU in bfloat16)
        with torch.inference_mode():
            blank = torch.zeros(1, 3, height, width, dtype=model.dtype, device=model.device)
            features = model.encode_images(blank).shape[1]
        side = math.isqrt(features)
        if height != width or side * side != features or height % side:
            raise ModelError(
                f"model {name!r}: {hf_id} gives {features} features for a {height}x{width} "
                "image, not a square grid of whole patches; LLaVA's processor cannot expand it"
            )
        processor.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        llava_processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=processor,
            patch_size=height // side,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
            image_token=IMAGE_PLACEHOLDER,
        )
        return model, llava_processor

    def image_feature_token_id(self, name: str, model: PreTrainedModel) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)

    def forward(self, inputs: Mapping[str, Any], **kwargs: Any) -> CausalLMOutputWithPast:
        return self.decode(inputs, use_cache=False, **kwargs)

    def forward_cached(
        self, inputs: Mapping[str, Any], cache: DynamicCache, **kwargs: Any
    ) -> CausalLMOutputWithPast:
        return self.decode(inputs, past_key_values=cache, use_cache=True, **kwargs)

    def decode(self, inputs: Mapping[str, Any], **kwargs: Any) -> CausalLMOutputWithPast:
        """The decoder on the token embeddings with the image features spliced in; logits at
        the last position only (the remote forward would compute them at every position)."""
        inputs = dict(inputs)
        input_ids = inputs.pop("input_ids")
        pixel_values = inputs.pop("pixel_values", None)
        placeholders = input_ids == self.image_token_id
        # the added placeholder has no embedding of its own; its rows are overwritten
        embeddings = self.model.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
        if pixel_values is not None:
            features = self.model.encode_images(pixel_values).to(embeddings.dtype)
            embeddings = embeddings.masked_scatter(placeholders[..., None], features)
        output = self.model.get_model()(inputs_embeds=embeddings, **inputs, **kwargs)
        return CausalLMOutputWithPast(
            logits=self.model.get_output_embeddings()(output.last_hidden_state[:, -1:]),
            past_key_values=output.past_key_values,
            hidden_states=output.hidden_states,
        )
