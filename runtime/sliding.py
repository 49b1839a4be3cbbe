"""Sliding-window inference: cut a prepared image (a "canvas", :func:`edgeseg.runtime.images.canvas`) into
windows of the encoder's input size, and blend the per-window maps back (sum / count where windows overlap).

Two tilings, each the official one of a reference pipeline:

- ``pad`` (PyTorch-Encoding's ``MultiEvalModule``, lang-seg's evaluation): a canvas smaller than the window is
  padded at the bottom/right to the window; windows start at multiples of the stride; the last one in a row or
  column is cut at the canvas edge and padded to the window (with the recipe's pad value: black); its map is
  cropped back. Grids: ceil((P - window) / stride) + 1 per axis, P the padded canvas side.
- ``shift`` (mmseg's ``slide_inference``, TCL's evaluation): windows start at multiples of the stride and the
  last one is shifted back to end at the canvas edge, so every window lies inside the canvas. Grids:
  max(P - window + stride - 1, 0) // stride + 1. A canvas side smaller than the window is padded at the
  bottom/right with zeros (normalized), where mmseg would run the model at the smaller size (a fixed-size
  graph cannot).

    plan = SlidingWindow.plan((347, 520), window=(480, 480), stride=(320, 320), mode="pad")
    tiles = plan.cut(canvas_1x3xHxW, pad_value)        # n x 3 x 480 x 480
    maps = plan.blend(per_tile_maps)                    # n x C x 480 x 480 -> C x 347 x 520
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MODES = ("pad", "shift")


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v)
    if len(t) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in t):
        raise ValueError(f"{what} must be a positive integer or (height, width) of positive integers, got {v!r}")
    return int(t[0]), int(t[1])


def _starts_pad(side: int, window: int, stride: int) -> list[tuple[int, int]]:
    n = int(math.ceil((side - window) / stride)) + 1
    return [(i * stride, min(i * stride + window, side)) for i in range(n)]


def _starts_shift(side: int, window: int, stride: int) -> list[tuple[int, int]]:
    n = max(side - window + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + window, side)
        out.append((max(end - window, 0), end))
    return out


@dataclass(frozen=True)
class SlidingWindow:
    """A tiling of one canvas. ``canvas``: (H, W) of the prepared image; ``padded``: its size once padded to at
    least one window; ``boxes``: (y0, y1, x0, x1) per window in the padded canvas (y1 - y0 may be less than the
    window in ``pad`` mode: the rest of that window is padding)."""

    canvas: tuple[int, int]
    padded: tuple[int, int]
    window: tuple[int, int]
    stride: tuple[int, int]
    mode: str
    boxes: tuple[tuple[int, int, int, int], ...]

    @classmethod
    def plan(cls, canvas: tuple[int, int], window: int | Sequence[int], stride: int | Sequence[int] | None = None,
             mode: str = "shift") -> "SlidingWindow":
        """Windows over a canvas of (H, W); ``stride`` defaults to half the window."""
        if mode not in MODES:
            raise ValueError(f"sliding-window mode must be one of {list(MODES)}, got {mode!r}")
        win = _pair(window, "window")
        st = _pair(stride, "stride") if stride is not None else (max(1, win[0] // 2), max(1, win[1] // 2))
        if st[0] > win[0] or st[1] > win[1]:
            raise ValueError(f"stride {st} is larger than the window {win}: pixels between windows would get no "
                             f"prediction; use a stride <= the window")
        H, W = int(canvas[0]), int(canvas[1])
        P = (max(H, win[0]), max(W, win[1]))
        starts = _starts_pad if mode == "pad" else _starts_shift
        rows, cols = starts(P[0], win[0], st[0]), starts(P[1], win[1], st[1])
        boxes = tuple((y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols)
        return cls((H, W), P, win, st, mode, boxes)

    def __len__(self) -> int:
        return len(self.boxes)

    def pad_canvas(self, x: np.ndarray, pad_value: np.ndarray | float) -> np.ndarray:
        """1 x K x H x W canvas -> 1 x K x P_h x P_w, padded at the bottom/right with ``pad_value`` (per channel)."""
        H, W = self.canvas
        if x.shape[-2:] != (H, W):
            raise ValueError(f"canvas of shape {x.shape} does not match the tiling's canvas {self.canvas}")
        if self.padded == (H, W):
            return x
        out = np.empty(x.shape[:2] + self.padded, x.dtype)
        out[...] = np.asarray(pad_value, x.dtype).reshape(1, -1, 1, 1)
        out[..., :H, :W] = x
        return out

    def cut(self, x: np.ndarray, pad_value: np.ndarray | float = 0.0) -> np.ndarray:
        """1 x K x H x W canvas (or the padded canvas) -> n x K x window tiles (partial windows padded)."""
        if x.shape[-2:] != self.padded:
            x = self.pad_canvas(x, pad_value)
        wh, ww = self.window
        out = np.empty((len(self.boxes), x.shape[1], wh, ww), x.dtype)
        out[...] = np.asarray(pad_value, x.dtype).reshape(1, -1, 1, 1)
        for i, (y0, y1, x0, x1) in enumerate(self.boxes):
            out[i, :, :y1 - y0, :x1 - x0] = x[0, :, y0:y1, x0:x1]
        return out

    def blend(self, maps: np.ndarray) -> np.ndarray:
        """n x C x window per-window maps -> C x H x W (the canvas): the mean of every window covering a pixel."""
        if maps.shape[0] != len(self.boxes) or maps.shape[2:] != self.window:
            raise ValueError(f"blend takes {len(self.boxes)} x C x {self.window[0]} x {self.window[1]} maps, got "
                             f"{maps.shape}")
        acc = np.zeros((maps.shape[1],) + self.padded, np.float32)
        count = np.zeros(self.padded, np.float32)
        for m, (y0, y1, x0, x1) in zip(maps, self.boxes):
            acc[:, y0:y1, x0:x1] += m[:, :y1 - y0, :x1 - x0]
            count[y0:y1, x0:x1] += 1
        H, W = self.canvas
        return acc[:, :H, :W] / count[:H, :W]

    def describe(self) -> dict:
        """JSON facts of the tiling (for results and reports)."""
        return {"canvas": list(self.canvas), "window": list(self.window), "stride": list(self.stride),
                "mode": self.mode, "tiles": len(self.boxes)}
