"""Granite 4 Vision (IBM): LLaVA-NeXT's anyres tiling and vision tower, with windowed Q-Former
downsamplers in place of the projector, whose features are injected into a Granite decoder at
several layers ("deepstack"): the image tokens' embeddings are zeroed and each layer's features
are added to them before that layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Granite4VisionConfig,
    Granite4VisionForConditionalGeneration,
    Granite4VisionProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import text_config_kwargs
from vlprobe.models.llava_next import LlavaNextAdapter
from vlprobe.models.tiny import SpecialTokens

# query window side / key window side of the Q-Former downsamplers: 2 x 2 patches per token, the
# only rate that the 2 x 2 spatial-offset downsamplers (TL, TR, BL, BR) line up with
DOWNSAMPLE_RATE = "1/2"


class Granite4VisionAdapter(LlavaNextAdapter):
    """Granite 4 Vision checkpoints (model_type ``granite4_vision``,
    ``ibm-granite/granite-4.0-*-vision``); Granite's text tokens and LLaVA's ``<image>``.

    Hidden state ``i`` is the input of decoder layer ``i``: at the image tokens, the sum of the
    features injected before layers ``0 .. i`` (transformers' ``output_hidden_states[i]``, layer
    ``i - 1``'s output, lacks layer ``i``'s injection). Prefix reuse is valid: the injections go
    to image tokens only, which are all in the prefix, and the decoder is causal.

    Tiny key: ``image_size`` (56), the tile resolution; each tile gives
    ``(image_size / 28) ** 2`` tokens; ``vision_hidden_size`` defaults to 64 here. The tiny
    model injects before every decoder layer: the last vision layer's deepstack features before
    layer 0, two of the four spatial-offset groups before layers 1 and 2.
    """

    family = "granite4_vision"
    special_tokens = SpecialTokens(
        eos="<|end_of_text|>",
        pad="<|pad|>",
        extra=("<|start_of_role|>", "<|end_of_role|>", "<image>"),
    )
    # the Q-Former downsamplers have vision_hidden_size / 64 heads: at least 64 wide
    tiny_defaults = {"image_size": 56, "vision_hidden_size": 64}
    tiny_chat_template = None  # not LLaVA-NeXT-Mistral's; its own was not found verbatim

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Granite4VisionForConditionalGeneration, Granite4VisionProcessor]:
        processor = Granite4VisionProcessor(
            cls.tiny_image_processor(spec),
            **cls.tiny_processor_kwargs(tokenizer),
            downsample_rate=DOWNSAMPLE_RATE,
        )
        last = spec["num_layers"] - 1
        config = Granite4VisionConfig(
            **{
                **cls.tiny_config_kwargs(tokenizer, spec),
                "text_config": text_config_kwargs(tokenizer, spec),
            },
            image_grid_pinpoints=cls.tiny_pinpoints(spec),
            downsample_rate=DOWNSAMPLE_RATE,
            deepstack_layer_map=[[spec["vision_layers"], 0]],
            spatial_target_layers=sorted({min(1, last), last}),
            qformer_config={"intermediate_size": 2 * spec["vision_hidden_size"]},
        )
        return Granite4VisionForConditionalGeneration(config), processor
