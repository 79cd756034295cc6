"""Molmo2 (Ai2): a SigLIP-style ViT over a low-resolution view and overlapping high-resolution
crops, whose intermediate layers' features are pooled 2 x 2 by an attention adapter and added to
the image patch tokens' embeddings of a Qwen3 (or OLMo) decoder; image tokens attend to each other
bidirectionally."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import (
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2VideoProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
POOLING = 2  # the adapter pools 2 x 2 patches into one image token
# the tokens of the processor's image and video strings (Molmo2Processor.image_token_ids)
IMAGE_TOKENS = (
    "<im_patch>",
    "<im_col>",
    "<im_start>",
    "<low_res_im_start>",
    "<frame_start>",
    "<im_end>",
    "<frame_end>",
    "<im_low>",
)


class Molmo2Adapter(LoadedVLM):
    """Molmo2 checkpoints (model_type ``molmo2``, ``allenai/Molmo2-4B``). The placeholder
    ``<|image|>`` expands to a low-resolution view (``<low_res_im_start>``, rows of
    ``<im_patch>``, ``<im_end>``) and then the high-resolution crops (``<im_start>``, rows of
    ``<im_patch>`` each closed by ``<im_col>``, ``<im_end>``); the features go to the
    ``<im_patch>`` tokens. The processor starts every text with the BOS token (``<|im_end|>`` in
    the real checkpoints; the tiny tokenizer, whose BOS would also be added by the tokenizer,
    has none, and the processor then writes the same EOS token).

    Prefix reuse is valid: the image tokens (``mm_token_type_ids``) attend to each other
    bidirectionally but never to the text after the image, and the whole image block is in the
    prefix, as for Gemma-3. Suffix passes, text only, get no ``mm_token_type_ids`` and stay
    causal, as in the full pass.

    Tiny keys: ``image_size`` (56), the crop resolution, and ``max_crops`` (2).
    """

    family = "molmo2"
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<|image|>", "<|video|>", *IMAGE_TOKENS),
    )
    tiny_defaults = {"image_size": 56, "max_crops": 2}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Molmo2ForConditionalGeneration, Molmo2Processor]:
        size = spec["image_size"]
        processor = Molmo2Processor(
            image_processor=Molmo2ImageProcessor(
                size={"height": size, "width": size},
                max_crops=spec["max_crops"],
                overlap_margins=[1, 1],  # in patches (the real: 4 of 27)
                patch_size=PATCH_SIZE,
                pooling_size=[POOLING, POOLING],
            ),
            video_processor=Molmo2VideoProcessor(),  # required by the processor; unused here
            tokenizer=tokenizer,
            # as allenai/Molmo2-4B's processor_config.json
            image_use_col_tokens=True,
            use_single_crop_col_tokens=False,
            use_single_crop_start_token=True,
        )
        vision_hidden, heads = spec["vision_hidden_size"], spec["vision_attention_heads"]
        attention = {
            "hidden_size": vision_hidden,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": vision_hidden // heads,
        }
        token_id = tokenizer.convert_tokens_to_ids
        config = Molmo2Config(
            vision_config={
                **attention,
                "intermediate_size": 2 * vision_hidden,
                "num_hidden_layers": spec["vision_layers"],
                "image_size": [size, size],
                "patch_size": PATCH_SIZE,
                "num_position_embeddings": (size // PATCH_SIZE) ** 2,
            },
            adapter_config={
                **attention,
                # two ViT layers concatenated, as the real adapter reads layers -3 and -9
                "vision_feature_layer": [-2, -1],
                "intermediate_size": spec["intermediate_size"],
                "text_hidden_size": spec["hidden_size"],
            },
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                "additional_vocab_size": 0,  # the tiny vocabulary holds the image tokens
            },
            image_start_token_id=token_id("<im_start>"),
            low_res_image_start_token_id=token_id("<low_res_im_start>"),
            image_end_token_id=token_id("<im_end>"),
            image_patch_id=token_id("<im_patch>"),
            frame_start_token_id=token_id("<frame_start>"),
            frame_end_token_id=token_id("<frame_end>"),
        )
        model = Molmo2ForConditionalGeneration(config)
        # at transformers' std of 0.02, the adapter's five stacked projections shrink the image
        # features to ~1e-5 of the embeddings they are added to; a tiny model needs images to
        # matter, so its projections are drawn to keep the features' scale
        for module in model.model.multi_modal_projector.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features**-0.5)
        return model, processor
