"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020) in numpy: TCL's post-processing.

    refined = pamr(image, masks)            # image K x H x W float, masks C x H x W float -> C x H x W float32

Affinity of pixel i to each of its 8 neighbours j at every dilation d (edges replicated):
-|x_i - x_j| / (1e-8 + 0.1 std_i), std_i the unbiased standard deviation of the 9 values around i at every
dilation together, averaged over the K image channels, softmax-normalised over all neighbours. Then
``iterations`` times: mask_i <- sum_j aff_ij mask_j. Matches ``edgeseg.train.tcl.pamr`` (PyTorch) to 1e-5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_ITERATIONS = 10
DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _check(iterations: int, dilations: Sequence[int]) -> tuple[int, ...]:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"PAMR iterations must be an integer >= 0, got {iterations!r}")
    dil = tuple(dilations)
    if not dil or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dil):
        raise ValueError(f"PAMR dilations must be a non-empty list of integers >= 1, got {dilations!r}")
    return tuple(int(d) for d in dil)


def _shifted(padded: np.ndarray, d: int, dy: int, dx: int, H: int, W: int) -> np.ndarray:
    """The view of a map padded by ``d`` shifted by (dy, dx) * d: value at i = value at i + (dy, dx) d."""
    return padded[..., d + dy * d:d + dy * d + H, d + dx * d:d + dx * d + W]


def affinity(image: np.ndarray, dilations: Sequence[int] = DEFAULT_DILATIONS) -> np.ndarray:
    """image K x H x W -> P x H x W float32 neighbour weights (P = 8 per dilation), summing to 1 over P."""
    dil = _check(0, dilations)
    x = np.asarray(image, np.float32)
    K, H, W = x.shape
    around, diffs = [], []
    for d in dil:
        p = np.pad(x, ((0, 0), (d, d), (d, d)), mode="edge")
        around.append(x)
        for dy, dx in _OFFSETS:
            n = _shifted(p, d, dy, dx, H, W)
            around.append(n)
            diffs.append(np.abs(x - n))
    stack = np.stack(around, axis=1)  # K x 9 nd x H x W
    mean = stack.mean(axis=1, keepdims=True)
    std = np.sqrt(((stack - mean) ** 2).sum(axis=1) / (stack.shape[1] - 1))  # K x H x W, unbiased
    logits = (-np.stack(diffs, axis=1) / (1e-8 + 0.1 * std[:, None])).mean(axis=0)  # P x H x W
    logits -= logits.max(axis=0, keepdims=True)
    aff = np.exp(logits)
    return (aff / aff.sum(axis=0, keepdims=True)).astype(np.float32)


def pamr(image: np.ndarray, masks: np.ndarray, iterations: int = DEFAULT_ITERATIONS,
         dilations: Sequence[int] = DEFAULT_DILATIONS) -> np.ndarray:
    """Refine masks C x H x W with the affinities of ``image`` K x H x W (same H, W); returns float32."""
    dil = _check(iterations, dilations)
    image, masks = np.asarray(image), np.asarray(masks, np.float32)
    if image.ndim != 3 or masks.ndim != 3:
        raise ValueError(f"PAMR takes image K x H x W and masks C x H x W; got {image.shape} and {masks.shape}")
    if image.shape[1:] != masks.shape[1:]:
        raise ValueError(f"image {image.shape} and masks {masks.shape} differ in H, W; resize the masks first")
    aff = affinity(image, dil)
    H, W = masks.shape[1:]
    for _ in range(iterations):
        out = np.zeros_like(masks)
        k = 0
        for d in dil:
            p = np.pad(masks, ((0, 0), (d, d), (d, d)), mode="edge")
            for dy, dx in _OFFSETS:
                out += aff[k] * _shifted(p, d, dy, dx, H, W)
                k += 1
        masks = out
    return masks
