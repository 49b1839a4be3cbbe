"""Masks held compactly: each as its bounding box and the crop inside it, materialized at full size on demand.

A Ref-Diff result keeps every proposal it scored; at 4000 x 3000 ten full-size bool masks are 120 MB per
expression, while the crops of object-sized masks are a few MB.

    ms = MaskSet.from_masks(masks)     # N x H x W bool -> compact
    len(ms), ms.shape                  # N, (N, H, W)
    ms[i]                              # H x W bool (a new array)
    ms[1:3], ms[[0, 2]]                # N' x H x W bool
    ms.full()                          # N x H x W bool; np.asarray(ms) is the same
    ms.boxes                           # N x 4 int (y0, x0, y1, x1), exclusive ends; empty masks: all 0
    ms.areas                           # N int
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MaskSet:
    """N masks of one H x W image: ``boxes`` N x 4 (y0, x0, y1, x1) and the bool ``crops`` inside them."""

    size: tuple[int, int]
    boxes: np.ndarray
    crops: tuple[np.ndarray, ...]

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "MaskSet":
        """N x H x W bool (any truthy dtype) -> MaskSet."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be N x H x W, got shape {masks.shape}")
        boxes, crops = np.zeros((len(masks), 4), np.int64), []
        for i, m in enumerate(masks):
            ys, xs = np.nonzero(np.any(m, axis=1))[0], np.nonzero(np.any(m, axis=0))[0]
            if len(ys):
                boxes[i] = (ys[0], xs[0], ys[-1] + 1, xs[-1] + 1)
            y0, x0, y1, x1 = boxes[i]
            crop = np.ascontiguousarray(m[y0:y1, x0:x1], dtype=bool)
            crop.setflags(write=False)
            crops.append(crop)
        boxes.setflags(write=False)
        return cls((int(masks.shape[1]), int(masks.shape[2])), boxes, tuple(crops))

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self.size)

    @property
    def areas(self) -> np.ndarray:
        return np.array([int(c.sum()) for c in self.crops], np.int64)

    @property
    def nbytes(self) -> int:
        return int(sum(c.nbytes for c in self.crops) + self.boxes.nbytes)

    def mask(self, i: int) -> np.ndarray:
        """Mask ``i`` at full size: H x W bool."""
        out = np.zeros(self.size, bool)
        y0, x0, y1, x1 = self.boxes[i]
        out[y0:y1, x0:x1] = self.crops[i]
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"mask index {index} out of range for {n} masks")
            return self.mask(int(index) % n)
        picked = np.arange(len(self))[index]
        return np.stack([self.mask(int(i)) for i in np.atleast_1d(picked)]) if np.size(picked) else \
            np.zeros((0, *self.size), bool)

    def full(self) -> np.ndarray:
        """N x H x W bool."""
        return self[:]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.full()
        return out if dtype is None else out.astype(dtype)
