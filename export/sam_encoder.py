"""Component ``sam_encoder``: SAM image encoder (ViT + neck).

image B x 3 x S x S float32 (RGB resized longest side -> S, normalized with the SAM pixel mean/std, zero-padded
bottom-right; ``edgeseg.runtime.sam_auto.sam_preprocess``) -> image_embeddings B x C x g x g float32
(S = 1024, g = 64, C = 256 for ViT-B/H; S = 128, g = 16, C = 64 for toy-tiny). Ref-Diff runs it on one image
(B = 1); the batch axis is dynamic (1..max_batch) so the graph is not frozen at the export example's batch.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "sam_encoder"


class SamEncoderWrapper(nn.Module):
    """Export-only: ``sam.image_encoder`` on an already preprocessed image; no control flow on data."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image B x 3 x S x S float32 -> image_embeddings B x C x g x g float32."""
        return self.image_encoder(image)


def spec(img_size: int, grid: int, embed_dim: int, max_batch: int = 2, opset: int = 17) -> ComponentSpec:
    """Spec of ``sam_encoder`` for an S = ``img_size`` input and a ``grid`` x ``grid`` x ``embed_dim`` output."""
    if img_size % grid:
        raise ValueError(f"img_size {img_size} is not a multiple of the embedding grid {grid}; use the "
                         f"config's img_size and img_size // patch_size")
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "image", (3, img_size, img_size), max_batch),),
        outputs=(TensorSpec("image_embeddings", "float32", ("batch", embed_dim, grid, grid)),),
        opset=opset,
        # INT8 builds keep the neck (1x1 + 3x3 convs, LayerNorms; ~1 % of the encoder's compute) FP32: its output
        # is the embedding every mask outline is decoded from. Per-part study on validation seed 1
        # (benchmarks/refdiff_int8_isolation.py --requantize sam_encoder -> refdiff-int8-sam-encoder.json):
        # chosen-mask IoU with only the encoder INT8 0.989 quantized whole, 0.992 with the neck FP32 (the only
        # variant without a wrong choice); the last block, the MLP down-projections, the patch embedding or the
        # qkv projections FP32 instead: 0.955-0.986 (choice flips at n = 40).
        int8_exclude=(r"neck/",),
        description="SAM image encoder: preprocessed (resized, normalized, padded) RGB -> image embeddings",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A normalized-image-like input (unit normal values), batch ``batch`` or the spec's ``which`` shape."""
    shape = list(getattr(spec.inputs[0], which))
    if batch is not None:
        shape[0] = batch
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g),)
