"""kNN post-processing: the numpy runtime equals the PyTorch reference, and its edge cases behave."""

import numpy as np
import pytest
import torch

from edgeseg.runtime.knn import knn_indices, knn_refine
from edgeseg.train.ifseg import knn_refine as knn_refine_torch


def _case(seed: int, c: int = 5, d: int = 16, h: int = 12, w: int = 12):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(c, h, w)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return probs.astype(np.float32), rng.normal(size=(d, h, w)).astype(np.float32)


@pytest.mark.parametrize("k, iterations", [(3, 25), (3, 1), (5, 10), (1, 25), (3, 0)])
def test_numpy_equals_torch_reference(k, iterations):
    probs, feats = _case(k * 100 + iterations)
    got = knn_refine(probs, feats, k, iterations)
    ref = knn_refine_torch(torch.from_numpy(probs)[None], torch.from_numpy(feats)[None], k, iterations)[0].numpy()
    assert got.dtype == np.float32 and got.shape == probs.shape
    assert np.abs(got - ref).max() < 1e-5


def test_ties_are_broken_alike():
    """Repeated features (flat image regions) tie exactly: both sides pick the lower index, self first."""
    probs, feats = _case(7, h=6, w=6)
    feats[:, :3] = feats[:, :1]  # three identical rows of positions
    ref = knn_refine_torch(torch.from_numpy(probs)[None], torch.from_numpy(feats)[None], 3, 25)[0].numpy()
    assert np.abs(knn_refine(probs, feats, 3, 25) - ref).max() < 1e-5


def test_k1_and_zero_iterations_are_identity():
    probs, feats = _case(1)
    assert np.allclose(knn_refine(probs, feats, 1, 25), probs, atol=1e-7)
    assert np.allclose(knn_refine(probs, feats, 3, 0), probs, atol=1e-7)


def test_neighbours_self_first_and_probabilities_stay_distributions():
    probs, feats = _case(2)
    idx = knn_indices(feats, 3)
    assert idx.shape == (144, 3) and np.array_equal(idx[:, 0], np.arange(144))
    out = knn_refine(probs, feats, 3, 25)
    assert np.allclose(out.sum(0), 1, atol=1e-5) and out.min() >= 0


def test_smooths_a_noisy_region_with_consistent_features():
    """Two regions with distinct features; a few flipped labels inside a region are voted back."""
    rng = np.random.default_rng(3)
    region = np.zeros((8, 8), int)
    region[:, 4:] = 1
    feats = np.stack([np.where(region == r, 1.0, 0.0) for r in (0, 1)]) + rng.normal(size=(2, 8, 8)) * 0.05
    feats = np.concatenate([feats, rng.normal(size=(6, 8, 8)) * 0.05])
    probs = np.stack([region == 0, region == 1]).astype(np.float32) * 0.8 + 0.1
    probs[:, 2, 1] = probs[::-1, 2, 1]  # one wrong position in each region
    probs[:, 5, 6] = probs[::-1, 5, 6]
    out = knn_refine(probs, feats.astype(np.float32), 3, 25)
    assert np.array_equal(out.argmax(0), region)


@pytest.mark.parametrize("kwargs, msg", [({"k": 0}, "k must be >= 1"), ({"iterations": -1}, "iterations must be >= 0")])
def test_bad_arguments(kwargs, msg):
    probs, feats = _case(4)
    with pytest.raises(ValueError, match=msg):
        knn_refine(probs, feats, **kwargs)


def test_grid_mismatch():
    probs, feats = _case(5)
    with pytest.raises(ValueError, match="same grid"):
        knn_refine(probs, feats[:, :6], 3, 25)
