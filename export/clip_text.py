"""Component ``clip_text``: token ids N x L int64 -> unit-norm text embeddings N x D float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "clip_text"


class ClipTextWrapper(nn.Module):
    """Export-only: open_clip ``encode_text`` + L2 normalization; no data-dependent control flow."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(input_ids), dim=-1)


def spec(context_length: int, embed_dim: int, max_batch: int = 64) -> ComponentSpec:
    L = context_length
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "input_ids", (L,), max_batch, opt_n=8, dtype="int64"),),
        outputs=(TensorSpec("text_embeds", "float32", ("batch", embed_dim)),),
        description="CLIP text tower (EOT pooling, projection), L2-normalized",
    )


def example_ids(context_length: int, batch: int = 2) -> torch.Tensor:
    """Valid ids: sot, a few words, eot (the tower pools at argmax = eot), zero padding."""
    ids = torch.zeros(batch, context_length, dtype=torch.int64)
    for b in range(batch):
        n = 2 + b % max(1, context_length - 3)
        ids[b, 0], ids[b, 1:n] = 49406, torch.arange(320, 320 + n - 1)
        ids[b, n] = 49407
    return ids
