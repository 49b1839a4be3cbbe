"""Component ``sam_masks``: the per-mask work of SAM automatic mask generation, in the engine.

segment_anything's ``SamAutomaticMaskGenerator`` upscales every prompt's image tokens to low-resolution mask
logits, then upsamples each mask to the original image (bilinear to the S x S encoder input, crop the valid
h x w area, bilinear to H x W), thresholds it, scores its stability on the upsampled logits and takes its box.
This graph does all of it for P prompts x K mask outputs at once, for the prompts whose predicted IoU passed the
filter (``sam_decoder`` gives the IoU first); the host keeps only box NMS and top-k by area
(``edgeseg.runtime.sam_auto.generate_masks``).

Inputs (no shape-tensor inputs: the image size comes in as the shapes of the two resize matrices):

* ``image_tokens`` P x g^2 x C float32 and ``hyper_in`` P x K x C/8 float32 (``sam_decoder`` outputs of the
  kept prompts; K = 3 multimask outputs for the automatic grid, 1..4)
* ``resize_rows`` H x 4g float32 and ``resize_cols`` W x 4g float32: the two bilinear resizes and the crop,
  composed into one matrix per axis (``edgeseg.runtime.sam_auto.resize_matrices``, PyTorch's
  ``align_corners=False`` weights), so logits = rows @ low @ cols^T
* ``thresholds`` 3 float32: (mask_threshold - offset, mask_threshold, mask_threshold + offset)

Outputs:

* ``low_res_masks`` P x K x 4g x 4g float32 logits (SAM's mask decoder output)
* ``masks`` P x K x H x W float16, 1 where the upsampled logit > mask_threshold, else 0 (the runtime's dtype
  table has no bool; half the bytes of float32)
* ``stability`` P x K float32: |logits > t + offset| / |logits > t - offset| (1 for an empty loose mask),
  SAM's ``calculate_stability_score`` on the upsampled logits
* ``areas`` P x K float32: pixel count of the mask (exact: H x W <= 4096 x 4096 <= 2^24)
* ``boxes`` P x K x 4 float32: x0, y0, x1, y1 inclusive pixel indices (SAM's ``batched_mask_to_box``;
  0, 0, 0, 0 for an empty mask)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec

NAME = "sam_masks"
MAX_SIDE = 4096  # largest original image side (the TensorRT profile's max for H and W)


class SamMasksWrapper(nn.Module):
    """Export-only: SAM's output upscaling with the two 2x2 stride-2 ConvTransposes as channels-last MatMuls
    (C -> 4 x C/4 -> 4 x C/8, LayerNorm2d on the channel axis), the hypernetwork product, one pixel-shuffle
    transpose of the K low-res maps; upsampling as two MatMuls; three thresholds; counts and boxes by
    reductions."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        pe, up = sam.prompt_encoder, sam.mask_decoder.output_upscaling
        c1, c2 = up[0], up[3]  # ConvTranspose2d(C, C/4, 2, 2), ConvTranspose2d(C/4, C/8, 2, 2)
        with torch.no_grad():  # weights as C_in x (kh, kw, C_out) matrices, biases repeated per sub-pixel
            for name, conv in (("1", c1), ("2", c2)):
                self.register_buffer("w" + name, conv.weight.permute(0, 2, 3, 1).flatten(1).detach().clone(),
                                     persistent=False)
                self.register_buffer("b" + name, conv.bias.repeat(4).detach().clone(), persistent=False)
        self.ln, self.act1, self.act2 = up[1], up[2], up[4]
        self.c1, self.c2 = int(c1.weight.shape[1]), int(c2.weight.shape[1])
        self.grid = int(pe.image_embedding_size[0])

    def upscale(self, image_tokens: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """P x g^2 x C, P x K x C/8 -> P x K x 4g x 4g low-res logits (SAM's upscaling + hypernetwork product)."""
        p, k, g = image_tokens.shape[0], hyper_in.shape[1], self.grid
        y = torch.matmul(image_tokens, self.w1) + self.b1  # P x Ni x (2 x 2 x C/4), sub-pixels (a, b)
        y = F.layer_norm(y.reshape(p, -1, self.c1), (self.c1,), self.ln.weight, self.ln.bias, self.ln.eps)
        y = self.act2(torch.matmul(self.act1(y), self.w2) + self.b2).reshape(p, -1, self.c2)  # P x 16Ni x C/8
        low = torch.matmul(hyper_in, y.transpose(1, 2))  # P x K x 16Ni, pixels (i, j, a, b, a2, b2)
        low = low.reshape(p, k, g, g, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)  # rows 4i+2a+a2, cols 4j+2b+b2
        return low.reshape(p, k, 4 * g, 4 * g)

    def forward(self, image_tokens: torch.Tensor, hyper_in: torch.Tensor, resize_rows: torch.Tensor,
                resize_cols: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """P x g^2 x C, P x K x C/8, H x 4g, W x 4g, 3 -> (P x K x 4g x 4g low-res logits, P x K x H x W
        float16 0/1, P x K stability, P x K areas, P x K x 4 boxes)."""
        low = self.upscale(image_tokens, hyper_in)
        logits = torch.matmul(resize_rows, torch.matmul(low, resize_cols.t()))  # P x K x H x W
        loose = (logits > thresholds[0]).float().sum(dim=(2, 3))
        mask = (logits > thresholds[1]).float()
        strict = (logits > thresholds[2]).float().sum(dim=(2, 3))
        stability = torch.where(loose > 0, strict / torch.clamp(loose, min=1.0), torch.ones_like(loose))
        area = mask.sum(dim=(2, 3))
        rows, cols = mask.amax(dim=3), mask.amax(dim=2)  # P x K x H: the row holds a mask pixel; P x K x W
        ys = torch.arange(resize_rows.shape[0]).float()  # int64 Range + Cast: Range has no float16 (FP16 builds)
        xs = torch.arange(resize_cols.shape[0]).float()
        hi_y, hi_x = ys[-1:], xs[-1:]  # H - 1, W - 1
        y1, x1 = (rows * ys).amax(dim=2), (cols * xs).amax(dim=2)
        y0, x0 = hi_y - (rows * (hi_y - ys)).amax(dim=2), hi_x - (cols * (hi_x - xs)).amax(dim=2)
        boxes = torch.stack([x0, y0, x1, y1], dim=2) * (area > 0).float().unsqueeze(2)
        return low, mask.half(), stability, area, boxes


def spec(grid: int, embed_dim: int, max_prompts: int = 64, opt_prompts: int = 16, opt_side: int = 512,
         opset: int = 17) -> ComponentSpec:
    """Spec of ``sam_masks`` for a ``grid`` x ``grid`` x ``embed_dim`` SAM (4g x 4g low-res masks), up to
    ``max_prompts`` prompts per call and original images up to :data:`MAX_SIDE` a side."""
    if not 1 <= opt_prompts <= max_prompts:
        raise ValueError(f"opt_prompts {opt_prompts} must be in [1, max_prompts={max_prompts}]")
    low, ni, c8 = 4 * grid, grid * grid, embed_dim // 8
    pk = ("prompts", "outputs")
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("image_tokens", "float32", ("prompts", ni, embed_dim), (1, ni, embed_dim),
                           (opt_prompts, ni, embed_dim), (max_prompts, ni, embed_dim)),
                TensorSpec("hyper_in", "float32", (*pk, c8), (1, 1, c8), (opt_prompts, 3, c8), (max_prompts, 4, c8)),
                TensorSpec("resize_rows", "float32", ("height", low), (1, low), (opt_side, low), (MAX_SIDE, low)),
                TensorSpec("resize_cols", "float32", ("width", low), (1, low), (opt_side, low), (MAX_SIDE, low)),
                TensorSpec("thresholds", "float32", (3,))),
        outputs=(TensorSpec("low_res_masks", "float32", (*pk, low, low)),
                 TensorSpec("masks", "float16", (*pk, "height", "width")),
                 TensorSpec("stability", "float32", pk),
                 TensorSpec("areas", "float32", pk),
                 TensorSpec("boxes", "float32", (*pk, 4))),
        opset=opset,
        int8_exclude=(".*",),  # thresholds and pixel counts after the upscaling: kept FP32
        description=f"SAM automatic-mask per-mask work: P prompts' image tokens + K hypernetwork vectors -> "
                    f"{low}x{low} logits, upsampled to the original H x W (composed bilinear matrices), "
                    f"thresholded masks, stability scores, areas, boxes",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """P prompts of random unit-variance image tokens and hypernetwork vectors (K = 3), the resize matrices of
    a small (12 x 9) image letterboxed into the encoder frame, thresholds (-1, 0, 1). The image is small so
    that no logit of the parity check falls within float rounding of a threshold."""
    from edgeseg.runtime.sam_auto import resize_matrices

    tok_t, hyp_t, rows_t = spec.inputs[0], spec.inputs[1], spec.inputs[2]
    n = batch if batch is not None else getattr(tok_t, which)[0]
    low = int(rows_t.shape[-1])
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn((n, *tok_t.shape[1:]), generator=g)
    hyper = torch.randn((n, 3, hyp_t.shape[-1]), generator=g)
    rows, cols = resize_matrices(low, (low * 4, (low * 4 * 3) // 4), (12, 9), low * 4)
    return tokens, hyper, torch.from_numpy(rows), torch.from_numpy(cols), torch.tensor([-1.0, 0.0, 1.0])
