"""Component ``sam_decoder``: SAM prompt encoder (points / box corners) + mask decoder, a batch of prompts.

Inputs (no shape-tensor inputs, no final resize in the graph, unlike segment-anything's ``SamOnnxModel`` whose
``orig_im_size`` crop is frozen at the export image size: export-notes trap 8):

* ``image_embeddings`` 1 x C x g x g float32 (``sam_encoder`` output of one image)
* ``point_coords`` N x P x 2 float32, (x, y) in the S x S encoder-input frame (original coords x resize scale)
* ``point_labels`` N x P float32: 1 foreground, 0 background, -1 padding, 2 / 3 box top-left / bottom-right

N prompts (dynamic, 1..64, opt 16) and P points per prompt (dynamic, 1..8, opt 2). A single point prompt is
the point plus a padding point (label -1) as in SAM; a box is its two corners (labels 2, 3).

Outputs:

* ``low_res_masks`` N x K x 4g x 4g float32 logits (threshold 0), K = 4: index 0 is the single-mask output
  (for boxes / several points), 1..3 the multimask outputs (for one ambiguous point: automatic mask generation)
* ``iou_predictions`` N x K float32

Upsampling to the image (bilinear to S, crop the valid area, bilinear to H x W) is done by the numpy runtime
on the surviving masks only (``edgeseg.runtime.sam_auto.postprocess_masks``).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.train.sam import embed_points, predict_masks

from edgeseg.export.spec import ComponentSpec, TensorSpec

NAME = "sam_decoder"
NUM_OUTPUTS = 4  # single-mask output + 3 multimask outputs
MULTIMASK = slice(1, 4)


class SamDecoderWrapper(nn.Module):
    """Export-only: prompt embedding (arithmetic masks instead of boolean indexing) + the mask decoder with the
    image embedding expanded (not ``repeat_interleave``d) to the prompt count; no data-dependent control flow."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        pe = sam.prompt_encoder
        with torch.no_grad():  # constant per model: computed once eagerly (trap 6: no shape logic in the trace)
            self.register_buffer("image_pe", pe.get_dense_pe().detach().clone(), persistent=False)
            self.register_buffer("no_mask", pe.no_mask_embed.weight.reshape(1, -1, 1, 1).detach().clone(),
                                 persistent=False)
        self.low_res = 4 * int(pe.image_embedding_size[0])  # constants: the graph declares 4 x 4g x 4g outputs
        self.num_outputs = int(sam.mask_decoder.num_mask_tokens)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1 x C x g x g, N x P x 2, N x P -> (N x 4 x 4g x 4g logits, N x 4 predicted IoU)."""
        sparse = embed_points(self.prompt_encoder, point_coords, point_labels)
        src = image_embeddings.expand(point_coords.shape[0], -1, -1, -1)
        masks, iou = predict_masks(self.mask_decoder, src, self.image_pe, sparse, self.no_mask)
        return masks.reshape(-1, self.num_outputs, self.low_res, self.low_res), iou


def spec(img_size: int, grid: int, embed_dim: int, max_prompts: int = 64, opt_prompts: int = 16,
         max_points: int = 8, opset: int = 17) -> ComponentSpec:
    """Spec of ``sam_decoder``: S = ``img_size`` prompt frame, ``grid`` x ``grid`` x ``embed_dim`` embeddings."""
    if not 1 <= opt_prompts <= max_prompts:
        raise ValueError(f"opt_prompts {opt_prompts} must be in [1, max_prompts={max_prompts}]")
    low = 4 * grid
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("image_embeddings", "float32", (1, embed_dim, grid, grid)),
                TensorSpec("point_coords", "float32", ("prompts", "points", 2), (1, 1, 2), (opt_prompts, 2, 2),
                           (max_prompts, max_points, 2)),
                TensorSpec("point_labels", "float32", ("prompts", "points"), (1, 1), (opt_prompts, 2),
                           (max_prompts, max_points))),
        outputs=(TensorSpec("low_res_masks", "float32", ("prompts", NUM_OUTPUTS, low, low)),
                 TensorSpec("iou_predictions", "float32", ("prompts", NUM_OUTPUTS))),
        opset=opset,
        description=f"SAM prompt encoder + mask decoder: N prompts of P points in the {img_size}px input frame -> "
                    f"low-res mask logits ({low}x{low}; output 0 single-mask, 1-3 multimask) and predicted IoU",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Valid prompts: N = ``batch`` (or the spec's ``which`` count) single points inside the S x S frame, each
    with a padding point (label -1) after it, except that every third prompt is a box (labels 2, 3)."""
    emb_t, coords_t = spec.inputs[0], spec.inputs[1]
    n = batch if batch is not None else getattr(coords_t, which)[0]
    p = max(2, getattr(coords_t, which)[1])
    size = float(4 * emb_t.shape[-1])  # only a scale for the coordinates; S is not stored in the spec
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(tuple(emb_t.shape), generator=g)
    coords = torch.rand((n, p, 2), generator=g) * size * 2
    labels = torch.full((n, p), -1.0)
    labels[:, 0] = 1.0
    coords[:, 1:] = torch.where(labels[:, 1:, None] == -1, torch.zeros(()), coords[:, 1:])
    box = torch.arange(n) % 3 == 2
    labels[box, 0], labels[box, 1] = 2.0, 3.0
    coords[box, 1] = coords[box, 0] + size / 2
    return emb, coords, labels
