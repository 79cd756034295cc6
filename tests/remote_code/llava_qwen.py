"""A stand-in for the remote code of Apple's FastVLM checkpoints (``apple/FastVLM-*``), which
cannot be downloaded here. Written for vlprobe's tests from the interface that Apple's model card
and repository describe, not from their code:

- model_type ``llava_qwen2``: a Qwen2 causal LM whose ``forward(input_ids, images=...)`` puts
  the projected features of each image in place of the one token id -200 of its row;
- ``image_aspect_ratio: pad`` in the config (the tower's input is the image padded to a
  square);
- ``get_model()`` (the decoder, which holds the vision tower and the projector),
  ``get_vision_tower()`` with the tower's ``image_processor`` (a CLIP processor without
  normalisation, at the resolution the tower's name ends with), and ``encode_images``.

The vision tower is one strided convolution instead of FastViTHD. The splice handles what the
tests need: one image per row and rows of one length, without padding.
"""

import torch
from torch import nn
from transformers import CLIPImageProcessor, Qwen2Config, Qwen2ForCausalLM, Qwen2Model

IMAGE_TOKEN_INDEX = -200


class LlavaConfig(Qwen2Config):
    model_type = "llava_qwen2"

    def __init__(
        self,
        mm_vision_tower: str = "conv_64",
        mm_hidden_size: int = 32,
        downsampling: int = 16,
        image_aspect_ratio: str = "pad",
        **kwargs,
    ):
        self.mm_vision_tower = mm_vision_tower
        self.image_aspect_ratio = image_aspect_ratio
        self.mm_hidden_size = mm_hidden_size
        self.downsampling = downsampling
        super().__init__(**kwargs)


class VisionTower(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        size = int(config.mm_vision_tower.split("_")[-1])
        self.image_processor = CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
        )
        self.patches = nn.Conv2d(
            3, config.mm_hidden_size, kernel_size=config.downsampling, stride=config.downsampling
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, tokens, C]
        return self.patches(images).flatten(2).transpose(1, 2)


class LlavaQwen2Model(Qwen2Model):
    config_class = LlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.vision_tower = VisionTower(config)
        self.mm_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def get_vision_tower(self) -> VisionTower:
        return self.vision_tower


class LlavaQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = LlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model = LlavaQwen2Model(config)
        self.post_init()

    def get_model(self) -> LlavaQwen2Model:
        return self.model

    def get_vision_tower(self) -> VisionTower:
        return self.model.get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.mm_projector(self.get_vision_tower()(images))

    def forward(self, input_ids=None, images=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None and images is not None:
            embed = self.get_model().embed_tokens
            rows = []
            for ids, features in zip(input_ids, self.encode_images(images), strict=True):
                at = int((ids == IMAGE_TOKEN_INDEX).nonzero())
                rows.append(torch.cat([embed(ids[:at]), features, embed(ids[at + 1 :])]))
            input_ids, inputs_embeds = None, torch.stack(rows)
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
