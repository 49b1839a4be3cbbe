"""Component ``tcl_head``: grounding embeddings B x D x h x w + MaskCLIP dense embeddings B x D x h' x w' + text
embeddings C x D (all unit norm) -> mask probabilities B x C x h x w in [0, 1]:
kp * sigmoid((cos_maskclip - 0.25) * 10) (bilinear to h x w) + (1 - kp) * sigmoid(w cos + b), with the learnt
w, b and kp = 0.3 baked in. Cheap: run per label set by ``predict``; PAMR and the background threshold are
runtime post-processing (numpy)."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input, text_embeds_input

NAME = "tcl_head"


class TCLHeadWrapper(nn.Module):
    def __init__(self, tcl: nn.Module):
        super().__init__()
        self.tcl = tcl

    def forward(self, grounding_embeds: torch.Tensor, clip_dense_embeds: torch.Tensor,
                text_embeds: torch.Tensor) -> torch.Tensor:
        return self.tcl.head(grounding_embeds, clip_dense_embeds, text_embeds)


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_batch: int = 4,
         max_labels: int = 64) -> ComponentSpec:
    H, W = image_size
    h, w = H // 4, W // 4
    gh, gw = grid
    D = embed_dim
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "grounding_embeds", (D, h, w), max_batch),
                dynamic_input("batch", "clip_dense_embeds", (D, gh, gw), max_batch),
                text_embeds_input(D, max_labels)),
        outputs=(TensorSpec("masks", "float32", ("batch", "labels", h, w)),),
        description="TCL head: sigmoid(w cos + b) mixed with the frozen MaskCLIP similarity (kp branch), stride 4",
    )
