"""Granite-Docling (IBM, ``granite-for-docling``): pages tiled as GOT-OCR2 tiles them (a grid
of 512-pixel tiles, plus a thumbnail), a SigLIP-style encoder, a pixel-shuffle connector with a
coarse and a fine path (a density router predicts which a page needs), and a Granite decoder into
which intermediate encoder layers are injected at the image tokens (Qwen3-VL's deepstack)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    GraniteDoclingConfig,
    GraniteDoclingForConditionalGeneration,
    GraniteDoclingImageProcessor,
    GraniteDoclingProcessor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs, vision_config_kwargs
from vlprobe.models.granite4_vision import Granite4VisionAdapter
from vlprobe.models.idefics3 import Idefics3Adapter
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 8
# the real connector's pixel shuffle: 4 x 4 patches per token on the coarse path, 2 x 2 on the
# fine one
SCALE_FACTOR = 4


class GraniteDoclingAdapter(LoadedVLM):
    """Granite-Docling checkpoints (model_type ``granite_docling``,
    ``ibm-granite/granite-for-docling-500m``); Granite's text tokens and Idefics3's image tokens
    (``<image>``, ``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>``).

    Hidden state ``i`` is the input of decoder layer ``i``: for ``1 <= i <= k`` (k the number of
    deepstack levels) layer ``i - 1``'s output plus the ``i``-th level's features at the image
    tokens, as in Qwen3-VL. Prefix reuse is valid: the injections go to image tokens only, all in
    the prefix, and the decoder is causal.

    Route: every image takes the path that the processor's ``fine_route`` sets (the coarse one
    by default, as the processor's own default): the model fixes the path per batch, and the
    density router's choice (``predict_fine_route``) would make an image's tokens depend on a
    prediction, so vlprobe does not consult it.

    Tiny keys: ``image_size`` (64), the tile side: ``(image_size / 32) ** 2`` coarse tokens per
    tile; ``max_tiles`` (4) tiles at most (plus the thumbnail); ``vision_layers`` defaults to 3
    here: the first two feed two deepstack levels. The tiny model has the fine path and the
    density router, as the 500M checkpoint.
    """

    family = "granite_docling"
    special_tokens = SpecialTokens(
        eos=Granite4VisionAdapter.special_tokens.eos,
        pad=Granite4VisionAdapter.special_tokens.pad,
        extra=tuple(
            dict.fromkeys(
                Granite4VisionAdapter.special_tokens.extra + Idefics3Adapter.special_tokens.extra
            )
        ),
    )
    tiny_defaults = {"image_size": 64, "max_tiles": 4, "vision_layers": 3}

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[GraniteDoclingForConditionalGeneration, GraniteDoclingProcessor]:
        size = spec["image_size"]
        processor = GraniteDoclingProcessor(
            image_processor=GraniteDoclingImageProcessor(
                size={"height": size, "width": size}, max_patches=spec["max_tiles"]
            ),
            tokenizer=tokenizer,
            image_seq_len=(size // PATCH_SIZE // SCALE_FACTOR) ** 2,
        )
        config = GraniteDoclingConfig(
            vision_config={
                **vision_config_kwargs(spec),
                "image_size": size,
                "patch_size": PATCH_SIZE,
                "scale_factor": SCALE_FACTOR,
                "out_hidden_size": spec["hidden_size"],
                # every encoder layer but the last feeds a level (real: 3 of 12)
                "deepstack_visual_indexes": list(range(spec["vision_layers"] - 1)) or [0],
                "use_fine_route": True,
            },
            text_config=text_config_kwargs(tokenizer, spec),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            pad_token_id=tokenizer.pad_token_id,
            density_router_hidden_size=spec["vision_hidden_size"],
        )
        return GraniteDoclingForConditionalGeneration(config), processor
