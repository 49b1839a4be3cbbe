"""Component ``lseg_head``: pixel embeddings B x D x h x w + text embeddings C x D -> logits B x C x 2h x 2w
(cosine / T, spatial-regularization blocks, bilinear x2). Cheap: run per label set by ``predict``."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input, text_embeds_input

NAME = "lseg_head"


class LSegHeadWrapper(nn.Module):
    def __init__(self, lseg: nn.Module):
        super().__init__()
        self.lseg = lseg

    def forward(self, pixel_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.lseg.head_logits(pixel_embeds, text_embeds)


def spec(image_size: tuple[int, int], embed_dim: int, max_batch: int = 4, max_labels: int = 64) -> ComponentSpec:
    H, W = image_size
    h, w = H // 2, W // 2
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "pixel_embeds", (embed_dim, h, w), max_batch),
                text_embeds_input(embed_dim, max_labels)),
        outputs=(TensorSpec("logits", "float32", ("batch", "labels", H, W)),),
        description="LSeg head: cosine logits / T, label-equivariant spatial blocks, bilinear x2",
    )
