"""Step-3.7-Flash (StepFun): a ViT with 2-D rotary positions over a global view and local crops,
each downsampled 4 x 4 by two stride-2 convolutions, a linear projector, and a mixture-of-experts
decoder with gated attention: sliding-window and full attention layers, plain 1-d positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    PreTrainedTokenizerBase,
    Step3p7Config,
    Step3p7ForConditionalGeneration,
    Step3p7ImageProcessor,
    Step3p7Processor,
)

from vlprobe.models.base import LoadedVLM, ModelError, text_config_kwargs, vision_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
# the two stride-2 convolutions after the ViT: one image token per 56 x 56 pixels
DOWNSAMPLE = 4
# shorter than the smallest tiny image block, so that a reused prefix crosses it, as a real image
# does (a 728-pixel global view alone gives 169 tokens; Step-3.5-Flash's window is 128 tokens)
SLIDING_WINDOW = 4


class Step3p7Adapter(LoadedVLM):
    """Step-3.7-Flash checkpoints (model_type ``step3p7``, ``stepfun-ai/Step-3.7-Flash``).

    The placeholder ``<im_patch>`` expands to each local crop's tokens between ``<patch_start>``
    and ``<patch_end>`` (``<patch_newline>`` after each row of crops but the last), then the
    global view's between ``<im_start>`` and ``<im_end>``. Nothing differs from the generic
    adapter: the decoder is causal over the image block, its sliding-window layers in a suffix
    pass see the last window of the reused prefix, as in the full pass, so prefix reuse holds.
    The "bidirectional" in its code is Gemma-3's embedding-model switch
    (``use_bidirectional_attention``, False in Step-3.7's text config): a checkpoint that turns
    it on attends to the whole text both ways, which vlprobe does not probe, and is refused.
    (``step3p5``, the text config's type, is Step-3.5-Flash's text-only model: no image path.)

    Transformers' code names the image tokens only; the tiny tokenizer's end-of-text and padding
    token ``<|endoftext|>`` stands in for the checkpoint's, and there is no chat template.

    Tiny keys: ``image_size`` (112), the global view's side: ``(image_size / 56) ** 2`` tokens;
    ``crop_size`` (56), a local crop's side (the real ones: 728 and 504).
    """

    family = "step3p7"
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=(
            "<im_patch>",
            "<im_start>",
            "<im_end>",
            "<patch_start>",
            "<patch_end>",
            "<patch_newline>",
        ),
    )
    tiny_defaults = {"image_size": 112, "crop_size": 56}

    @classmethod
    def check_checkpoint(cls, name: str, hf_id: str, checkpoint: Mapping[str, Any]) -> None:
        if checkpoint.get("text_config", {}).get("use_bidirectional_attention"):
            raise ModelError(
                f"model {name!r}: {hf_id} sets use_bidirectional_attention in its text config: "
                "every token attends to the whole text both ways (an encoder), not a decoder "
                "that vlprobe can probe"
            )

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Step3p7ForConditionalGeneration, Step3p7Processor]:
        size = spec["image_size"]
        processor = Step3p7Processor(
            image_processor=Step3p7ImageProcessor(
                size={"height": size, "width": size},
                patch_size=spec["crop_size"],
                vision_patch_size=PATCH_SIZE,
                downsampler_stride=DOWNSAMPLE,
            ),
            tokenizer=tokenizer,
        )
        layers = spec["num_layers"]
        vision = vision_config_kwargs(spec)
        config = Step3p7Config(
            vision_config={
                **vision,
                "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
                "image_size": size,
                "patch_size": PATCH_SIZE,
                "max_position_embeddings": (size // PATCH_SIZE) ** 2,
            },
            text_config={
                **text_config_kwargs(tokenizer, spec),
                "head_dim": spec["hidden_size"] // spec["num_attention_heads"],
                # sliding-window and full layers interleaved (3:1 in Step-3.5-Flash), the sliding
                # ones with their own head count, as the checkpoint's attention_other_setting has
                "layer_types": [
                    "full_attention" if i % 2 else "sliding_attention" for i in range(layers)
                ],
                "sliding_window": SLIDING_WINDOW,
                "num_sliding_attention_heads": spec["num_attention_heads"] // 2,
                # dense first layers, then mixture-of-experts ones (the real 0-2 and 3-44)
                "mlp_layer_types": ["dense"] + ["sparse"] * (layers - 1),
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": spec["hidden_size"] // 2,
                "share_expert_dim": spec["hidden_size"] // 2,
            },
            image_token_id=tokenizer.convert_tokens_to_ids("<im_patch>"),
        )
        return Step3p7ForConditionalGeneration(config), processor
