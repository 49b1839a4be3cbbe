"""SAM automatic mask generation around the engines (no torch): preprocessing, grid prompts, filtering.

Follows ``segment_anything``'s ``SamAutomaticMaskGenerator`` (one crop layer, no hole filling) around an
exported ``sam_decoder`` that returns low-resolution logits: only masks that pass the predicted-IoU filter are
upsampled to the original image, thresholded, stability-scored and boxed, in the ``sam_masks`` engine (or in
numpy for bundles without it); the host keeps the survivors bit-packed, then box NMS, minimum area, and the
``top_k`` largest masks (Ref-Diff keeps the 10 largest proposals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

AMG_DEFAULTS: dict[str, Any] = {
    "points_per_side": 16,  # grid of points_per_side^2 single-point prompts
    "pred_iou_thresh": 0.8,  # keep masks whose predicted IoU is above this
    "stability_score_thresh": 0.9,  # ... and whose stability score is above this
    "stability_offset": 1.0,  # logit offset of the stability score
    "box_nms_thresh": 0.7,  # box IoU above which the lower-scored mask is dropped
    "min_mask_area": 30,  # masks with fewer pixels (original resolution) are dropped
    "max_mask_fraction": 1.0,  # ... and masks covering more than this fraction of the image (1.0: none)
    "top_k": 10,  # keep this many masks, largest first (0: all)
    "batch": 64,  # prompts per decoder call
}
MultiMask = slice(1, None)  # decoder outputs used for the grid: the 3 multimask outputs (0 is single-mask)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after resizing the longest side to ``long_side`` (SAM's rounding)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_preprocess(image: np.ndarray, prep: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """image HxWx3 uint8 RGB -> (1x3xSxS float32: longest side resized to S = prep["img_size"] (PIL bilinear),
    normalized with pixel_mean/std (0-255 scale), zero-padded bottom-right; (h_resized, w_resized))."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.shape} {image.dtype}; convert it first")
    size = int(prep["img_size"])
    h, w = preprocess_shape(image.shape[0], image.shape[1], size)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32)
    norm = (resized - np.asarray(prep["pixel_mean"], np.float32)) / np.asarray(prep["pixel_std"], np.float32)
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, :h, :w] = norm.transpose(2, 0, 1)
    return out, (h, w)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of PyTorch's bilinear interpolation (align_corners=False, no antialias)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N x h x w float32 -> N x H x W with PyTorch ``F.interpolate(mode="bilinear", align_corners=False)``."""
    ry, rx = _bilinear_matrix(x.shape[1], size[0]), _bilinear_matrix(x.shape[2], size[1])
    return np.einsum("Yh,nhw,Xw->nYX", ry, x.astype(np.float32), rx, optimize=True).astype(np.float32)


def resize_matrices(low: int, input_hw: tuple[int, int], original_hw: tuple[int, int],
                    img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows H x low, cols W x low) float32: SAM's ``postprocess_masks`` as one matrix per axis (bilinear
    ``low`` -> S = ``img_size``, keep the valid ``input_hw`` area, bilinear -> ``original_hw``), so that the
    upsampled logits of a low x low map L are ``rows @ L @ cols.T``."""
    h, w = int(input_hw[0]), int(input_hw[1])
    if not (0 < h <= img_size and 0 < w <= img_size):
        raise ValueError(f"input_hw {input_hw} does not fit the {img_size}x{img_size} encoder input; pass the "
                         f"(h, w) that sam_preprocess returned")
    ry = _bilinear_matrix(low, img_size)[:h]  # upsample rows, keep the valid ones
    rx = _bilinear_matrix(low, img_size)[:w]
    ry = _bilinear_matrix(h, int(original_hw[0])) @ ry if (h != original_hw[0]) else ry
    rx = _bilinear_matrix(w, int(original_hw[1])) @ rx if (w != original_hw[1]) else rx
    return np.ascontiguousarray(ry, np.float32), np.ascontiguousarray(rx, np.float32)


def postprocess_masks(low_res: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int],
                      img_size: int) -> np.ndarray:
    """low_res N x 4g x 4g logits -> N x H x W float32 logits, as SAM's ``postprocess_masks``: bilinear
    upsample to the encoder input S x S (``img_size``), crop the valid ``input_hw`` area (the rest is padding),
    bilinear resize to ``original_hw``."""
    if low_res.ndim != 3 or low_res.shape[1] != low_res.shape[2]:
        raise ValueError(f"low_res must be N x h x h, got shape {low_res.shape}; select one mask output first")
    ry, rx = resize_matrices(low_res.shape[1], input_hw, original_hw, img_size)
    return np.einsum("Yh,nhw,Xw->nYX", ry, low_res.astype(np.float32), rx, optimize=True).astype(np.float32)


def point_grid(n: int) -> np.ndarray:
    """n^2 x 2 (x, y) points in [0, 1], cell centres of an n x n grid, x fastest (SAM's ``build_point_grid``)."""
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {n}")
    side = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    xs, ys = np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def stability_score(logits: np.ndarray, threshold: float, offset: float) -> np.ndarray:
    """N x H x W logits -> N: |logits > t + offset| / |logits > t - offset| (1 for empty masks)."""
    inter = (logits > threshold + offset).sum(axis=(-1, -2), dtype=np.int64)
    union = (logits > threshold - offset).sum(axis=(-1, -2), dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """N x H x W bool -> N x 4 float32 (x0, y0, x1, y1), inclusive pixel indices as SAM's
    ``batched_mask_to_box``; empty masks give 0, 0, 0, 0."""
    if masks.shape[0] == 0:
        return np.zeros((0, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    h, w = masks.shape[1], masks.shape[2]
    y0 = np.where(rows.any(1), rows.argmax(1), 0)
    y1 = np.where(rows.any(1), h - 1 - rows[:, ::-1].argmax(1), 0)
    x0 = np.where(cols.any(1), cols.argmax(1), 0)
    x1 = np.where(cols.any(1), w - 1 - cols[:, ::-1].argmax(1), 0)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first (areas (x1 - x0) * (y1 - y0), as torchvision)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        xx0, yy0 = np.maximum(boxes[i, 0], boxes[:, 0]), np.maximum(boxes[i, 1], boxes[:, 1])
        xx1, yy1 = np.minimum(boxes[i, 2], boxes[:, 2]), np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        union = area[i] + area - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        suppressed |= iou > iou_thresh
    return np.asarray(keep, np.int64)


ProgressFn = Callable[[int, int], None]  # (point batches done, total), called after each batch
MASKS_PIXEL_BUDGET = 1 << 24  # upsampled pixels per sam_masks call (M x H x W): bounds its float32 buffers


@dataclass
class _Kept:
    """The masks that passed both filters so far: bit-packed rows (N x H x ceil(W / 8) uint8), boxes, scores."""

    packed: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    iou: list[np.ndarray] = field(default_factory=list)
    stab: list[np.ndarray] = field(default_factory=list)
    area: list[np.ndarray] = field(default_factory=list)

    def add(self, masks: np.ndarray, boxes: np.ndarray, iou: np.ndarray, stab: np.ndarray, area: np.ndarray) -> None:
        if len(iou):
            self.packed.append(np.packbits(masks, axis=-1))
            for name, a in (("boxes", boxes), ("iou", iou), ("stab", stab), ("area", area)):
                getattr(self, name).append(a)


def _numpy_masks(low: np.ndarray, iou: np.ndarray, kept: _Kept, geom: tuple, cfg: dict, t: float) -> None:
    """The per-mask work on the host (bundles without ``sam_masks``): upsample, stability, threshold, boxes."""
    logits = postprocess_masks(low, *geom)
    stab = stability_score(logits, t, cfg["stability_offset"])
    ok = stab >= cfg["stability_score_thresh"]
    m = logits[ok] > t
    kept.add(m, mask_boxes(m), iou[ok], stab[ok], m.sum(axis=(1, 2), dtype=np.int64))


def _engine_masks(run_masks: Callable, out: dict[str, np.ndarray], kept: _Kept, feeds: dict, per_call: int,
                  cfg: dict) -> None:
    """The per-mask work in the ``sam_masks`` engine for the prompts with a mask output past the IoU filter,
    ``per_call`` prompts a call (their 3 multimask outputs); the host keeps the survivors of both filters."""
    iou = out["iou_predictions"][:, MultiMask]  # N x 3
    passed = iou > cfg["pred_iou_thresh"]
    prompts = np.flatnonzero(passed.any(axis=1))
    for s in range(0, len(prompts), per_call):
        p = prompts[s:s + per_call]
        every = len(p) == len(iou)  # the whole batch: the decoder's arrays as they are, no copy
        res = run_masks(dict(feeds, image_tokens=out["image_tokens"] if every else out["image_tokens"][p],
                             hyper_in=np.ascontiguousarray(out["hyper_in"][p, MultiMask])))
        ok = passed[p] & (res["stability"] >= cfg["stability_score_thresh"])  # P x 3, SAM's (prompt, output) order
        kept.add(res["masks"][ok] > 0, res["boxes"][ok].astype(np.float32), iou[p][ok],
                 res["stability"][ok].astype(np.float32), res["areas"][ok].astype(np.int64))


def generate_masks(run_decoder: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                   image_embeddings: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int],
                   amg: dict[str, Any], img_size: int | None = None, mask_threshold: float = 0.0,
                   run_masks: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                   max_prompts: int = 64, low_side: int | None = None, progress: ProgressFn | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Automatic masks of one image -> (masks N x H x W bool, predicted_iou N, stability N), largest first.

    run_decoder: feeds {"image_embeddings" 1xCxgxg, "point_coords" Bx2x2, "point_labels" Bx2} -> outputs with
    "low_res_masks" B x K x 4g x 4g and "iou_predictions" B x K (an ORT session's ``run`` wrapped, or torch);
    each grid point is one prompt (label 1) plus a padding point (label -1); outputs 1.. (multimask) are used.
    The embedding array is the same object in every batch (converted once per image).
    run_masks: the ``sam_masks`` component; then run_decoder is today's ``sam_decoder`` (outputs
    iou_predictions, hyper_in, image_tokens) and the upscaling, upsampling, thresholds, stability and boxes of
    the prompts that pass the IoU filter run in the engine, at most ``max_prompts`` prompts a call (and
    :data:`MASKS_PIXEL_BUDGET` upsampled pixels); ``low_side``: its 4g (default 4 x the embedding grid).
    None: run_decoder returns low_res_masks (bundles exported before ``sam_masks``, or torch) and that work
    runs in numpy (same results). Either way the host does box NMS, the area limits and top-k by area, and
    keeps the surviving masks bit-packed. progress(done, total) after each point batch. img_size: the encoder
    input side S (default ``amg["img_size"]``). Deterministic.
    """
    cfg = dict(AMG_DEFAULTS, **amg)
    size = img_size or cfg.get("img_size")
    if not size:
        raise ValueError("generate_masks needs the encoder input size: pass img_size= or amg['img_size'] "
                         "(the bundle's sam_preprocessing img_size)")
    H, W = int(original_hw[0]), int(original_hw[1])
    h_in, w_in = int(input_hw[0]), int(input_hw[1])
    points = point_grid(int(cfg["points_per_side"])) * np.array([W, H], np.float64)
    coords_in = (points * np.array([w_in / W, h_in / H])).astype(np.float32)
    batch = max(1, int(cfg["batch"]))
    emb = np.ascontiguousarray(image_embeddings, np.float32)  # once per image, not per point batch
    low_side = low_side or 4 * emb.shape[-1]
    kept, total, t = _Kept(), -(-len(coords_in) // batch), float(mask_threshold)
    per_call = max(1, min(int(max_prompts), MASKS_PIXEL_BUDGET // max(1, 3 * H * W)))
    if run_masks is not None:
        off = float(cfg["stability_offset"])
        rows, cols = resize_matrices(int(low_side), (h_in, w_in), (H, W), int(size))
        masks_feeds = {"resize_rows": rows, "resize_cols": cols,
                       "thresholds": np.array([t - off, t, t + off], np.float32)}
    for i, s in enumerate(range(0, len(coords_in), batch)):
        c = coords_in[s:s + batch]
        out = run_decoder({"image_embeddings": emb, "point_coords": np.stack([c, np.zeros_like(c)], axis=1),
                           "point_labels": np.tile(np.array([[1.0, -1.0]], np.float32), (len(c), 1))})
        if run_masks is not None:
            _engine_masks(run_masks, out, kept, masks_feeds, per_call, cfg)
        else:
            if "low_res_masks" not in out:
                raise ValueError(f"the decoder returned {sorted(out)} without low_res_masks: a sam_decoder of this "
                                 f"version needs the sam_masks engine (pass run_masks=)")
            low_all, iou_all = out["low_res_masks"], out["iou_predictions"][:, MultiMask]
            keep = np.flatnonzero(iou_all.reshape(-1) > cfg["pred_iou_thresh"])
            if keep.size:
                k = iou_all.shape[1]
                low = low_all[keep // k, MultiMask.start + keep % k]  # only the kept maps are copied
                _numpy_masks(low, iou_all.reshape(-1)[keep], kept, ((h_in, w_in), (H, W), int(size)), cfg, t)
        if progress is not None:
            progress(i + 1, total)
    return _select(kept, H, W, cfg)


def _select(kept: _Kept, H: int, W: int, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box NMS (predicted IoU as the score), area limits, the ``top_k`` largest; unpack only those."""
    if not kept.iou:
        return np.zeros((0, H, W), bool), np.zeros(0, np.float32), np.zeros(0, np.float32)
    boxes, iou, stab, area = (np.concatenate(x) for x in (kept.boxes, kept.iou, kept.stab, kept.area))
    order = box_nms(boxes, iou, float(cfg["box_nms_thresh"]))  # highest score first
    ok = (area[order] >= int(cfg["min_mask_area"])) & (area[order] <= float(cfg["max_mask_fraction"]) * H * W)
    order = order[ok]
    order = order[np.argsort(-area[order], kind="stable")]
    if int(cfg["top_k"]) > 0:
        order = order[:int(cfg["top_k"])]
    starts = np.cumsum([0] + [len(p) for p in kept.packed])
    part = np.searchsorted(starts, order, side="right") - 1
    masks = np.zeros((len(order), H, W), bool)
    for j, (p, i) in enumerate(zip(part, order)):
        masks[j] = np.unpackbits(kept.packed[p][i - starts[p]], axis=-1, count=W).astype(bool)
    return masks, iou[order].astype(np.float32), stab[order].astype(np.float32)
