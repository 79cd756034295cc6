"""Qwen2.5-Omni's thinker: Qwen2.5-VL's vision tower (window attention, 2 x 2 merger) and a Qwen2
decoder with M-RoPE, beside a Whisper-style audio encoder. Only the image and text path is used:
the audio encoder is built because the model class has one, never run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from transformers import (
    AutoConfig,
    BaseVideoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

from vlprobe.models.qwen2_5_vl import Qwen2_5VLAdapter
from vlprobe.models.tiny import SpecialTokens

# the real audio front end: 128 mel bins (Whisper's default is 80)
MEL_BINS = 128


def thinker_loader(thinker_class: type[PreTrainedModel]) -> type:
    """The Auto class of an Omni thinker family: it loads a thinker checkpoint as it is, and of
    a whole Omni checkpoint (thinker and talker) the thinker alone, from its ``thinker_config``
    and its ``thinker.`` weights (the talker's and vocoder's are left out)."""

    class ThinkerLoader:
        @staticmethod
        def from_pretrained(hf_id: str, **kwargs: Any) -> PreTrainedModel:
            source = {
                key: kwargs[key] for key in ("revision", "trust_remote_code") if key in kwargs
            }
            config = AutoConfig.from_pretrained(hf_id, **source)
            if not hasattr(config, "thinker_config"):
                return thinker_class.from_pretrained(hf_id, **kwargs)
            return thinker_class.from_pretrained(
                hf_id, config=config.thinker_config, key_mapping={r"^thinker\.": ""}, **kwargs
            )

        @staticmethod
        def from_config(config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
            kwargs.pop("trust_remote_code", None)  # a native class
            return thinker_class._from_config(getattr(config, "thinker_config", config), **kwargs)

    ThinkerLoader.__name__ = f"{thinker_class.__name__}Loader"
    return ThinkerLoader


def omni_token_ids(tokenizer: PreTrainedTokenizerBase, tokens: SpecialTokens) -> dict[str, int]:
    """A tiny Omni thinker config's token ids: the tokenizer's ids of the named tokens."""
    return {
        key: tokenizer.convert_tokens_to_ids(tokens.named[token])
        for key, token in [
            ("image_token_id", "image_token"),
            ("video_token_id", "video_token"),
            ("audio_token_id", "audio_token"),
            ("audio_start_token_id", "audio_bos_token"),
            # not fields of the thinker configs, but read by their get_rope_index
            ("audio_end_token_id", "audio_eos_token"),
            ("vision_start_token_id", "vision_bos_token"),
            ("vision_end_token_id", "vision_eos_token"),
        ]
    }


def tiny_thinker(
    adapter: type,
    tokenizer: PreTrainedTokenizerBase,
    spec: Mapping[str, Any],
    video_processor: BaseVideoProcessor,
    token_ids: Mapping[str, int],
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny Omni thinker of ``adapter``'s classes and its processor: the adapter's tiny
    towers, with the audio encoder and the video and audio processors that the classes
    require (unused for images)."""
    processor = adapter.processor_class(
        image_processor=adapter.tiny_image_processor(spec),
        video_processor=video_processor,
        feature_extractor=WhisperFeatureExtractor(feature_size=MEL_BINS),
        tokenizer=tokenizer,
    )
    config = adapter.config_class(
        text_config=adapter.tiny_text_config(tokenizer, spec),
        vision_config=adapter.tiny_vision_config(spec),
        audio_config=adapter.tiny_audio_config(spec),
        **token_ids,
    )
    return adapter.model_class(config), processor


class Qwen2_5OmniThinkerAdapter(Qwen2_5VLAdapter):
    """Qwen2.5-Omni's thinker, the text-generating half of ``Qwen/Qwen2.5-Omni-*``: checkpoints of
    it alone (model_type ``qwen2_5_omni_thinker``), and the thinker of the published whole
    checkpoints (model_type ``qwen2_5_omni``: thinker and talker; the talker is not loaded).
    Placeholder ``<|vision_bos|><|IMAGE|>
    <|vision_eos|>`` from the chat template; M-RoPE positions from the model's
    ``get_rope_index``, which finds an image by the ``<|vision_bos|>`` before it (so the
    placeholder must keep it). Causal over image tokens: prefix reuse is valid.

    Tiny keys as for ``qwen2_vl``.
    """

    family = "qwen2_5_omni_thinker"
    # thinker checkpoints, and the thinker of whole ones (the published Qwen/Qwen2.5-Omni-*)
    model_types = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    auto_model_class = thinker_loader(Qwen2_5OmniThinkerForConditionalGeneration)
    config_class: ClassVar[type] = Qwen2_5OmniThinkerConfig
    model_class: ClassVar[type] = Qwen2_5OmniThinkerForConditionalGeneration
    processor_class: ClassVar[type] = Qwen2_5OmniProcessor
    # the processor reads these as tokenizer attributes (audio ones too, even for images)
    special_tokens = SpecialTokens(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra=("<|im_start|>", "<|endoftext|>"),
        named={
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "audio_token": "<|AUDIO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )
    tiny_chat_template = "qwen2_5_omni.jinja"

    @property
    def image_token_ids(self) -> list[int]:
        # get_rope_index takes the token after an image for its end marker: a prefix must hold
        # the markers on both sides of the image
        markers = (self.processor.vision_bos_token, self.processor.vision_eos_token)
        return [self.image_token_id, *self.tokenizer.convert_tokens_to_ids(list(markers))]

    @classmethod
    def tiny_audio_config(cls, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A one-layer audio encoder: required by the model class, unused for images."""
        width = spec["vision_hidden_size"] // 2
        return {
            "num_mel_bins": MEL_BINS,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 2 * width,
            "d_model": width,
            "output_dim": spec["hidden_size"],
        }

    @classmethod
    def tiny_token_ids(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        ids = omni_token_ids(tokenizer, cls.special_tokens)
        # this thinker config names three of them *_token_index
        for kind in ("image", "video", "audio"):
            ids[f"{kind}_token_index"] = ids.pop(f"{kind}_token_id")
        return ids

    @classmethod
    def tiny_model_and_processor(
        cls, tokenizer: PreTrainedTokenizerBase, spec: Mapping[str, Any]
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        return tiny_thinker(
            cls, tokenizer, spec, Qwen2VLVideoProcessor(), cls.tiny_token_ids(tokenizer)
        )
