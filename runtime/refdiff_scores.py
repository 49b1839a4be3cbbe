"""Ref-Diff's proposal and scoring arithmetic in numpy (no model calls): weight-free threshold proposals,
the generative score s^G, the discriminative score s^D, masks at the CLIP patch grid, and the referring
metrics (oIoU, mIoU).

Shapes: ``c`` H x W float32 in [0, 1] (the normalized attention map at image size); ``masks`` N x H x W bool.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 5%, 10%, ..., 95% of the normalized map


def normalize_map(a: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Min-max normalization to [0, 1] (a constant map gives zeros)."""
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / max(hi - lo, eps)


def threshold_proposals(c: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> np.ndarray:
    """N x H x W bool: ``c >= q`` for each threshold q, dropping empty masks (N <= len(thresholds))."""
    masks = np.stack([c >= q for q in thresholds])
    return masks[masks.reshape(len(masks), -1).any(1)]


def generative_scores(c: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """s^G = mean(c inside M) - mean(c outside M), N float32 (an empty side contributes 0)."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    cv = c.reshape(-1).astype(np.float32)
    n_in = flat.sum(1)
    n_out = flat.shape[1] - n_in
    s_in = flat @ cv
    s_out = cv.sum() - s_in
    mean_in = np.where(n_in > 0, s_in / np.maximum(n_in, 1), 0.0)
    mean_out = np.where(n_out > 0, s_out / np.maximum(n_out, 1), 0.0)
    return (mean_in - mean_out).astype(np.float32)


def discriminative_scores(masked_embeds: np.ndarray, crop_embeds: np.ndarray, text: np.ndarray,
                          beta: float) -> np.ndarray:
    """s^D = cos(v, r), v = beta f_M(x*P) + (1 - beta) f(x*M): N x D unit-norm embeddings of both branches and
    r (D, unit norm) -> N float32."""
    v = beta * masked_embeds + (1.0 - beta) * crop_embeds
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return (v @ text).astype(np.float32)


def patch_masks(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """N x H x W bool -> N x gh x gw float32 in {0, 1}: a patch is in when at least half of it is covered;
    a mask covering no patch that much keeps its best-covered patch, so every row has >= 1 patch."""
    from PIL import Image

    gh, gw = grid
    frac = np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((gw, gh), Image.BOX))
                     for m in masks]) if len(masks) else np.zeros((0, gh, gw), np.float32)
    out = (frac >= 0.5).astype(np.float32)
    for i in np.flatnonzero(out.reshape(len(out), -1).sum(1) == 0):
        out[i].reshape(-1)[int(frac[i].argmax())] = 1.0
    return out


def masked_crops(image: np.ndarray, masks: np.ndarray, mode: str) -> list[np.ndarray]:
    """The hard branch's inputs, uint8 HxWx3 each: ``mask`` = x * M (black outside the mask, the paper);
    ``crop`` = the bounding box of M cut from x, unmasked (not the released code, which masks and then cuts the
    box: :func:`edgeseg.runtime.refdiff_released.hard_crop`, ``hard_branch="masked_box"``)."""
    if mode not in ("mask", "crop"):
        raise ValueError(f"hard_branch {mode!r} is not one of 'mask', 'crop'")
    out = []
    for m in masks:
        if mode == "mask":
            out.append(image * m[..., None].astype(np.uint8))
            continue
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            out.append(np.zeros_like(image))
            continue
        out.append(np.ascontiguousarray(image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]))
    return out


def intersection_union(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two H x W bool masks (their IoU is the first over the second)."""
    return int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())


class ReferMetrics:
    """Accumulates oIoU (cumulative intersection / cumulative union) and mIoU (mean per-expression IoU)."""

    def __init__(self) -> None:
        self.inter = self.union = 0
        self.ious: list[float] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        i, u = intersection_union(pred, gt)
        self.inter += i
        self.union += u
        self.ious.append(i / u if u else 1.0)
        return self.ious[-1]

    @property
    def oiou(self) -> float:
        return self.inter / self.union if self.union else 0.0

    @property
    def miou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else 0.0

    def to_dict(self) -> dict:
        return {"oIoU": round(self.oiou, 4), "mIoU": round(self.miou, 4), "n": len(self.ious)}
