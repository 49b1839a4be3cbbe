"""Segmentation metrics in numpy (shared by training-time checks and runtime evaluation).

Convention: ground truth and prediction are HxW integer label maps over the same label list; ground-truth
pixels equal to ``ignore`` (255: pixels whose class is not in the evaluated label set) are left out.
mIoU is the mean over the classes *present in the ground truth* of the whole evaluated set, from one
confusion matrix accumulated over every image (not a mean of per-image mIoUs).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore: int = IGNORE):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.n, self.ignore = num_classes, ignore
        self.matrix = np.zeros((num_classes, num_classes), np.int64)  # rows: truth, cols: prediction

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        """truth, pred: HxW integer label maps of the same shape."""
        if truth.shape != pred.shape:
            raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
        keep = truth != self.ignore
        t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
        if t.size and (t.max() >= self.n or p.max() >= self.n or p.min() < 0):
            raise ValueError(f"labels out of range for {self.n} classes")
        self.matrix += np.bincount(t * self.n + p, minlength=self.n * self.n).reshape(self.n, self.n)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from the ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        gt, pr = self.matrix.sum(1), self.matrix.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (gt + pr - tp)
        iou[gt == 0] = np.nan
        return iou

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two HxW boolean masks (1.0 when both are empty)."""
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0
