"""Component ``tcl_encoder``: image B x 3 x H x W float32 (normalized) -> unit-norm TCL grounding embeddings
B x D x H/4 x W/4 and the frozen CLIP's unit-norm MaskCLIP dense embeddings B x D x H/p x W/p (p = patch
size; the head mixes both). The costly half of TCL, run once per image by ``set_image``."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, image_input

NAME = "tcl_encoder"


class TCLEncoderWrapper(nn.Module):
    """Export-only: frozen CLIP up to its last block, MaskCLIP dense path, masker, grounding decoder."""

    def __init__(self, tcl: nn.Module):
        super().__init__()
        self.tcl = tcl

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tcl.encode(image)


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_batch: int = 4) -> ComponentSpec:
    H, W = image_size
    return ComponentSpec(
        NAME,
        inputs=(image_input((H, W), max_batch),),
        outputs=(TensorSpec("grounding_embeds", "float32", ("batch", embed_dim, H // 4, W // 4)),
                 TensorSpec("clip_dense_embeds", "float32", ("batch", embed_dim, grid[0], grid[1]))),
        description="TCL image encoder: frozen CLIP ViT + trainable masker block + gated residual grounding "
                    "decoder (stride-4 embeddings), and the frozen CLIP's MaskCLIP dense embeddings",
    )
