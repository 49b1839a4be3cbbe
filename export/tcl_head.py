"""Component ``tcl_head``: grounding embeddings B x D x h x w + MaskCLIP dense embeddings B x D x h' x w' + text
embeddings C x D (all unit norm) -> the two terms of TCL's inference mask, each B x C x h x w in [0, 1]:
``tcl_masks`` = sigmoid(w cos + b) (the learnt w, b baked in) and ``kp_masks`` = sigmoid((cos_maskclip - 0.25)
* 10) bilinearly upsampled to h x w. Cheap: run per label set by ``predict``. The runtime refines ``tcl_masks``
with PAMR, then mixes kp_weight * kp + (1 - kp_weight) * tcl (TCL's official order), then applies the
background threshold (numpy). Bundles exported before carry one ``masks`` output (mixed in the graph)."""

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
                text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tcl.head_terms(grounding_embeds, clip_dense_embeds, text_embeds)


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
        outputs=(TensorSpec("tcl_masks", "float32", ("batch", "labels", h, w)),
                 TensorSpec("kp_masks", "float32", ("batch", "labels", h, w))),
        description="TCL head: sigmoid(w cos + b) and the frozen MaskCLIP term sigmoid((cos - 0.25) 10) (kp branch), "
                    "stride 4, mixed by the runtime after PAMR",
    )
