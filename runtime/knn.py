"""IFSeg's kNN post-processing in numpy: smooth class probabilities over each position's nearest neighbours
in image-feature space.

For every position of the feature grid, its ``k`` nearest positions of the same image by cosine similarity of
the image features (itself always first, ties broken by the lower index; K = 3 including self in IFSeg), then
``iterations`` times (25 in IFSeg): probabilities <- mean of the neighbours' probabilities. The neighbour sets
do not change, so each iteration is a product with one row-stochastic N x N matrix.

PyTorch reference: ``edgeseg.train.ifseg.knn_refine`` (tests/runtime/test_knn.py holds them equal).
"""

from __future__ import annotations

import numpy as np

DEFAULT_K, DEFAULT_ITERATIONS = 3, 25


def knn_indices(feats: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """feats: D x h x w image features -> N x K int64 neighbour indices (N = h*w, K = min(k, N), self first)."""
    if feats.ndim != 3:
        raise ValueError(f"features must be D x h x w, got shape {feats.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (the position itself counts), got {k}")
    f = feats.reshape(feats.shape[0], -1).astype(np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-12)
    sim = f.T @ f  # N x N cosine
    np.fill_diagonal(sim, np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :min(k, sim.shape[0])]


def knn_refine(probs: np.ndarray, feats: np.ndarray, k: int = DEFAULT_K,
               iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """probs: C x h x w class probabilities, feats: D x h x w image features (same grid) -> refined C x h x w
    float32. k = 1 (only itself) or iterations = 0 leaves the probabilities unchanged."""
    if probs.ndim != 3 or probs.shape[1:] != feats.shape[1:]:
        raise ValueError(f"probabilities {probs.shape} and features {feats.shape} must be C x h x w and D x h x w "
                         f"on the same grid")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    idx = knn_indices(feats, k)
    n = idx.shape[0]
    avg = np.zeros((n, n), np.float64)  # row i: 1/K at each (distinct) neighbour of i
    avg[np.arange(n)[:, None], idx] = 1.0 / idx.shape[1]
    p = probs.reshape(probs.shape[0], n).astype(np.float64)
    avg_t = avg.T.copy()
    for _ in range(iterations):  # C x N products: cheaper than powers of the N x N matrix while C < N
        p = p @ avg_t
    return p.reshape(probs.shape).astype(np.float32)
