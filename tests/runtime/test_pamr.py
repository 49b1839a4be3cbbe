"""Numpy PAMR (runtime) against the PyTorch reference (train.tcl.pamr), its properties and its input checks."""

import numpy as np
import pytest
import torch

from edgeseg.runtime.pamr import DEFAULT_DILATIONS, DEFAULT_ITERATIONS, affinity, pamr
from edgeseg.train.tcl import PAMR_DILATIONS, PAMR_ITERATIONS
from edgeseg.train.tcl import pamr as torch_pamr


@pytest.mark.parametrize("dilations, iterations, size", [
    ((1,), 1, (17, 23)),
    ((1, 2), 3, (32, 32)),
    ((3, 5), 10, (20, 41)),
    (DEFAULT_DILATIONS, DEFAULT_ITERATIONS, (48, 40)),  # dilations larger than half the image: edge replication
])
def test_numpy_pamr_equals_the_torch_reference(dilations, iterations, size):
    rng = np.random.default_rng(sum(size) + iterations)
    image = rng.normal(0, 1, (3,) + size).astype(np.float32)
    image[:, :5, :5] = 0.7  # a flat patch: std 0 inside, the 1e-8 guard must behave the same
    masks = rng.random((6,) + size).astype(np.float32)
    ref = torch_pamr(torch.from_numpy(image)[None], torch.from_numpy(masks)[None], iterations, dilations)[0]
    got = pamr(image, masks, iterations, dilations)
    assert got.dtype == np.float32 and got.shape == masks.shape
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0)


def test_defaults_are_the_papers():
    assert (DEFAULT_ITERATIONS, DEFAULT_DILATIONS) == (10, (1, 2, 4, 8, 12, 24)) == (PAMR_ITERATIONS, PAMR_DILATIONS)


def test_affinity_is_a_distribution_and_refinement_follows_edges():
    image = np.zeros((3, 24, 24), np.float32)
    image[:, :, 12:] = 1.0  # two flat halves
    aff = affinity(image, (1, 2))
    assert aff.shape == (16, 24, 24) and np.allclose(aff.sum(0), 1.0, atol=1e-6)
    masks = np.zeros((2, 24, 24), np.float32)
    masks[0, :, :12], masks[1, :, 12:] = 0.8, 0.8
    masks[0, 5:9, 14:17] = 0.9  # a wrong blob on the right half
    out = pamr(image, masks, 10, (1, 2, 4))
    assert (out[0, :, 12:] < 0.1).all(), "the blob across the edge should be washed out"
    assert (out[:, :, :12].argmax(0) == 0).all() and (out[:, :, 12:].argmax(0) == 1).all()
    const = np.full((2, 24, 24), 0.3, np.float32)
    np.testing.assert_allclose(pamr(np.random.default_rng(0).normal(size=(3, 24, 24)), const), const, atol=1e-5)
    assert np.array_equal(pamr(image, masks, 0, (1,)), masks)


@pytest.mark.parametrize("kwargs, msg", [
    ({"iterations": -1}, "iterations must be an integer >= 0"),
    ({"iterations": 2.5}, "iterations must be an integer >= 0"),
    ({"dilations": []}, "dilations must be a non-empty list"),
    ({"dilations": [1, 0]}, "dilations must be a non-empty list of integers >= 1"),
])
def test_bad_settings_are_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        pamr(np.zeros((3, 8, 8)), np.zeros((2, 8, 8)), **kwargs)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in H, W; resize the masks first"):
        pamr(np.zeros((3, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="image K x H x W and masks C x H x W"):
        pamr(np.zeros((8, 8)), np.zeros((2, 8, 8)))
