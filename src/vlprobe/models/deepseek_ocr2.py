"""DeepSeek-OCR 2: a SAM ViT-B with two stride-2 convolutions, whose patch features a Qwen2-style
encoder reads bidirectionally together with learned queries (attended causally), the queries'
outputs projected as the image's tokens, over a global view and local tiles; and a DeepSeek
mixture-of-experts decoder with plain multi-head attention and 1-d positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2ImageProcessor,
    DeepseekOcr2Processor,
    PreTrainedTokenizerBase,
)

from vlprobe.models.base import LoadedVLM
from vlprobe.models.unlimited_ocr import (
    DOWNSAMPLE,
    UnlimitedOcrAdapter,
    deepseek_ocr_sam_config,
    moe_text_config,
)

# The encoder's learned queries are fixed in number: 256 for a global view (SAM grid over 4 x 4
# above 12 x 12; 1024 pixels in 16-pixel patches in the real model) and 144 for a tile (768
# pixels), and the processor writes as many tokens. A tiny SAM tower reads three-pixel patches to
# give those grids from 192-pixel views and 144-pixel tiles (as GOT-OCR2's tiny tower reads small
# patches): the tests' images fit in a tile, so they get no tiles, which would take 2 to 6 x 144
# tokens more each (the family's tests 4 s -> 21 s); one test tiles a larger image.
TINY_PATCH_SIZE = 3
TINY_IMAGE_SIZE = 192
TINY_TILE_SIZE = 144


class DeepseekOcr2Adapter(LoadedVLM):
    """DeepSeek-OCR 2 checkpoints (model_type ``deepseek_ocr2``,
    ``deepseek-community/DeepSeek-OCR-2``).

    The placeholder ``<image>`` expands to the tiles' tokens (144 each; an image larger than a
    tile gets 2 to 6), the global view's 256 and a view separator, all ``<image>``. Nothing
    differs from the generic adapter: the bidirectional attention is inside the vision encoder
    (over SAM's features); the decoder is causal over the image block, so prefix reuse holds.
    The tiny tokenizer's special tokens are DeepSeek-OCR's, as Unlimited-OCR's; transformers
    has no chat template of it (raw format only).

    No tiny keys of its own: the queries' fixed counts set the grids, so a tiny SAM tower reads
    192-pixel views and 144-pixel tiles in three-pixel patches, with windowed attention only (its
    real global layers would attend over all 4,096 patches of a view).
    """

    family = "deepseek_ocr2"
    special_tokens = UnlimitedOcrAdapter.special_tokens  # DeepSeek-OCR's tokenizer, as there

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[DeepseekOcr2ForConditionalGeneration, DeepseekOcr2Processor]:
        processor = DeepseekOcr2Processor(
            image_processor=DeepseekOcr2ImageProcessor(
                size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                tile_size=TINY_TILE_SIZE,
            ),
            tokenizer=tokenizer,
            patch_size=TINY_PATCH_SIZE,
            downsample_ratio=DOWNSAMPLE,
        )
        vision = spec["vision_hidden_size"]
        heads = spec["vision_attention_heads"]
        config = DeepseekOcr2Config(
            vision_config={
                # windowed attention only
                "sam_config": deepseek_ocr_sam_config(
                    spec, TINY_IMAGE_SIZE, TINY_PATCH_SIZE, 8, []
                ),
                "encoder_config": {
                    "hidden_size": vision,
                    "intermediate_size": 2 * vision,
                    "num_hidden_layers": spec["vision_layers"],
                    "num_attention_heads": heads,
                    "num_key_value_heads": heads,
                },
            },
            text_config=moe_text_config(tokenizer, spec),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
        return DeepseekOcr2ForConditionalGeneration(config), processor
