"""Component ``lseg_encoder``: image B x 3 x H x W float32 (normalized) -> unit-norm pixel embeddings
B x D x H/2 x W/2 (the costly half of LSeg, run once per image by ``set_image``)."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, image_input

NAME = "lseg_encoder"


class LSegEncoderWrapper(nn.Module):
    def __init__(self, lseg: nn.Module):
        super().__init__()
        self.lseg = lseg

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.lseg.encode(image)


def spec(image_size: tuple[int, int], embed_dim: int, max_batch: int = 4) -> ComponentSpec:
    H, W = image_size
    return ComponentSpec(
        NAME,
        inputs=(image_input((H, W), max_batch),),
        outputs=(TensorSpec("pixel_embeds", "float32", ("batch", embed_dim, H // 2, W // 2)),),
        description="LSeg image encoder (CLIP ViT + DPT decoder), stride-2 pixel embeddings",
    )
