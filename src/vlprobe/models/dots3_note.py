"""dots3 note: a native-resolution ViT with mixture-of-experts layers and a 2 x 2 patch-merging
adapter, an audio encoder (unused here), and a decoder of DeepSeek-V3.2-style MLA layers (sparse
"indexed" attention and sliding-window ones) with mixture-of-experts MLPs; plain 1-d positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    Dots3NoteConfig,
    Dots3NoteFeatureExtractor,
    Dots3NoteForConditionalGeneration,
    Dots3NoteProcessor,
    PreTrainedTokenizerBase,
    Qwen2VLImageProcessor,
    Qwen3VLVideoProcessor,
)

from vlprobe.models.base import LoadedVLM, text_config_kwargs
from vlprobe.models.tiny import SpecialTokens

PATCH_SIZE = 14
MERGE_SIZE = 2
ROPE_DIM = 8  # a tiny model's rotary part of each query and key head
NOPE_DIM = 8  # and the part without positions


class Dots3NoteAdapter(LoadedVLM):
    """dots3 note checkpoints (model_type ``dots3_note``, ``dots-studio/dots3-note-prev``). The
    placeholder ``<|imgpad|>`` expands to one token per merged 2 x 2 patch; nothing differs from
    the generic adapter. The tiny tokenizer holds the processor's fixed image, video and audio
    tokens (the checkpoint's other tokens were not read here).

    Tiny keys: ``min_image_tokens`` (16) and ``max_image_tokens`` (64), as for qwen2_vl.
    """

    family = "dots3_note"
    special_tokens = SpecialTokens(
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        extra=("<|imgpad|>", "<|video_pad|>", "<|audio_comp_pad|>"),
    )
    tiny_defaults = {"min_image_tokens": 16, "max_image_tokens": 64}
    # the checkpoint's template is not available offline: tiny models run in raw format only

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[Dots3NoteForConditionalGeneration, Dots3NoteProcessor]:
        pixels_per_token = (PATCH_SIZE * MERGE_SIZE) ** 2
        processor = Dots3NoteProcessor(
            image_processor=Qwen2VLImageProcessor(
                min_pixels=spec["min_image_tokens"] * pixels_per_token,
                max_pixels=spec["max_image_tokens"] * pixels_per_token,
                patch_size=PATCH_SIZE,
                merge_size=MERGE_SIZE,
                temporal_patch_size=1,  # the patch embedding reads single frames
            ),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),  # required by the processor; unused here
            feature_extractor=Dots3NoteFeatureExtractor(),  # likewise
        )
        hidden, vision = spec["hidden_size"], spec["vision_hidden_size"]
        heads = spec["num_attention_heads"]
        head_dim = ROPE_DIM + NOPE_DIM
        attention = {  # MLA: low-rank queries and keys/values, a rotary part per head
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "q_lora_rank": hidden // 2,
            "kv_lora_rank": hidden // 2,
            "head_dim": head_dim,
            "qk_nope_head_dim": NOPE_DIM,
            "v_head_dim": head_dim,
        }
        vision_layers = spec["vision_layers"]
        config = Dots3NoteConfig(
            vision_config={
                "hidden_size": vision,
                "intermediate_size": 2 * vision,
                "moe_intermediate_size": vision,
                "num_hidden_layers": vision_layers,
                "num_attention_heads": spec["vision_attention_heads"],
                "patch_size": PATCH_SIZE,
                "spatial_merge_size": MERGE_SIZE,
                # dense layers, then a mixture-of-experts one, as in the real pyramid
                "pyramid_num_routed": [-1] * (vision_layers - 1) + [4],
                "adapter_in_dim": vision,
                "adapter_out_dim": hidden,
                "adapter_merge_size": MERGE_SIZE,
            },
            audio_config={
                "hidden_size": vision,
                "intermediate_size": 2 * vision,
                "num_hidden_layers": 1,
                "num_attention_heads": spec["vision_attention_heads"],
                "downsample_hidden_size": vision,
                "adapter_input_size": vision,
                "adapter_out_dim": hidden,
            },
            text_config={
                **text_config_kwargs(tokenizer, spec),
                **attention,
                "qk_rope_head_dim": ROPE_DIM,
                **{f"swa_{key}": value for key, value in attention.items()},
                # two indexed-attention layers, then sliding-window ones, as in the real pattern
                "index_head_dim": head_dim,
                "index_n_heads": 2,
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "n_shared_experts": 1,
                "moe_intermediate_size": hidden // 2,
                "moe_shared_expert_intermediate_size": hidden // 2,
            },
            image_token_id=tokenizer.convert_tokens_to_ids("<|imgpad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            audio_token_id=tokenizer.convert_tokens_to_ids("<|audio_comp_pad|>"),
        )
        return Dots3NoteForConditionalGeneration(config), processor
