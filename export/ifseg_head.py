"""Component ``ifseg_head``: dense features B x D x h x w + category text embeddings C x D -> logits
B x C x h x w at the feature grid (the word-trained decoder: joint attention over pixel and category tokens,
scaled cosine against the tied category embeddings). The runtime refines the softmax at the grid (kNN) and
resizes it to the image. Cheap: run per label set by ``predict``."""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input, text_embeds_input

NAME = "ifseg_head"


class IFSegHeadWrapper(nn.Module):
    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, dense_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        return self.decoder(dense_embeds, text_embeds)


def spec(grid: tuple[int, int], embed_dim: int, max_batch: int = 4, max_labels: int = 64) -> ComponentSpec:
    h, w = grid
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "dense_embeds", (embed_dim, h, w), max_batch),
                text_embeds_input(embed_dim, max_labels)),
        outputs=(TensorSpec("logits", "float32", ("batch", "labels", h, w)),),
        description="IFSeg head: decoder over dense features and category tokens, scaled cosine logits at the grid",
        # The head is a few small MatMuls per label set (well under a millisecond); INT8 would buy nothing and it
        # takes no 'image'/'input_ids' calibration feed, so INT8 builds keep it FP32.
        int8_exclude=(".*",),
    )
