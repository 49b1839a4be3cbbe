"""Component ``clip_image``: image B x 3 x H x W float32 (normalized) -> global B x D and dense B x D x h x w
(MaskCLIP value path in the last block), both unit norm along D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.train.clip import encode_image_features

from edgeseg.export.spec import ComponentSpec, TensorSpec, image_input

NAME = "clip_image"


class ClipImageWrapper(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, _ = encode_image_features(self.visual, image)
        return F.normalize(feats.pooled, dim=-1), F.normalize(feats.dense, dim=1)


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_batch: int = 8) -> ComponentSpec:
    H, W = image_size
    return ComponentSpec(
        NAME,
        inputs=(image_input((H, W), max_batch),),
        outputs=(TensorSpec("image_embeds", "float32", ("batch", embed_dim)),
                 TensorSpec("dense_embeds", "float32", ("batch", embed_dim, grid[0], grid[1]))),
        description="CLIP image tower: global (class token) and MaskCLIP dense patch embeddings, L2-normalized",
    )
