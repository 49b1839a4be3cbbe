"""Component ``ifseg_encoder``: image B x 3 x H x W float32 (normalized) -> unit-norm MaskCLIP dense features
B x D x h x w of the frozen CLIP tower (value path in the last block). Run once per image by ``set_image``; its
output feeds both the IFSeg head and the kNN post-processing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.train.clip import encode_image_features

from edgeseg.export.spec import ComponentSpec, TensorSpec, image_input

NAME = "ifseg_encoder"


class IFSegEncoderWrapper(nn.Module):
    """Export-only: the CLIP image tower's dense path + L2 normalization along D."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats, _ = encode_image_features(self.visual, image)
        return F.normalize(feats.dense, dim=1)


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_batch: int = 4) -> ComponentSpec:
    H, W = image_size
    return ComponentSpec(
        NAME,
        inputs=(image_input((H, W), max_batch),),
        outputs=(TensorSpec("dense_embeds", "float32", ("batch", embed_dim, grid[0], grid[1])),),
        description="IFSeg encoder: frozen CLIP image tower, MaskCLIP dense patch embeddings, L2-normalized",
    )
