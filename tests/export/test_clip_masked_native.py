"""clip_masked's released soft branch (``native_embeds``) against the torch reference written from the released
code (:mod:`edgeseg.export.released_soft_reference`): embeddings at several native sizes and N, the attention
structure (what truly holds), the in-graph position-embedding interpolation and the nearest mask sampling; a
tiny "tok" CLIP (class-token readout, the released code) and the bundled avg-pool clip_toy (edgeseg's analogue)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_support import TOWERS, clip_tower, tok_clip  # tests/export is on sys.path (pytest prepends it)
from edgeseg.export import clip_masked as cm
from edgeseg.export.released_soft_reference import (released_attention_mask, released_patch_masks,
                                                     released_position_embedding, released_soft_embeddings)
from edgeseg.runtime.refdiff_released import released_native_masks

torch.set_num_threads(1)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module", params=TOWERS)
def model(request):
    clip = clip_tower(request.param)
    return request.param, clip.visual, cm.ClipMaskedWrapper(clip.visual).eval()


def _scene(h: int, w: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random H x W x 3 uint8 image and N masks: blobs (rectangles) plus noise, the last one tiny."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        masks[i, y0:y0 + rng.integers(h // 4, h // 2 + 1), x0:x0 + rng.integers(w // 4, w // 2 + 1)] = True
        masks[i] |= rng.random((h, w)) < 0.05
    return image, masks


def _wrapper_native(wrapper, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The wrapper's native branch fed as the runtime feeds it (numpy normalization and mask sampling)."""
    x = (image.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    nm = released_native_masks(masks, wrapper.stride)
    with torch.no_grad():
        out = wrapper.native_embeds(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])),
                                    torch.from_numpy(nm).flatten(1))
    return F.normalize(out, dim=-1).numpy()


@pytest.mark.parametrize("hw", [(32, 32), (96, 96), (45, 70), (70, 45), (96, 100), (130, 61)])
@pytest.mark.parametrize("n", [1, 3])
def test_native_equals_the_released_reference(model, hw, n):
    """(32, 32) / (96, 96): a tower's own square size (tok / avg: position embeddings as stored); (96, 100) for
    the toy: the same 12 x 12 grid but H != W, so the released rule interpolates (scale 12.1 / 12)."""
    _, visual, wrapper = model
    image, masks = _scene(*hw, n, seed=hw[0] * 7 + n)
    got = _wrapper_native(wrapper, image, masks)
    want = released_soft_embeddings(visual, image, masks, MEAN, STD)
    assert got.shape == want.shape == (n, visual.output_dim)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_a_proposal_depends_on_its_mask_not_on_the_others(model):
    """Copy i attends only to itself and its patches, and patches never attend to copies: changing (or dropping)
    the other proposals leaves proposal i unchanged; changing its own mask changes it. Pixels outside mask i do
    reach it (patches attend to every patch), so that is asserted too."""
    kind, visual, wrapper = model
    image, masks = _scene(64, 88, 3, seed=1)
    base = _wrapper_native(wrapper, image, masks)
    other = masks.copy()
    other[1] = ~other[1]
    other[2] = True
    changed = _wrapper_native(wrapper, image, other)
    np.testing.assert_allclose(changed[0], base[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(_wrapper_native(wrapper, image, masks[:1])[0], base[0], atol=1e-6, rtol=0)
    assert np.abs(changed[1] - base[1]).max() > 1e-3
    outside = image.copy()
    cells = released_native_masks(masks[:1], wrapper.stride)[0]
    cut = np.kron(cells, np.ones(wrapper.stride)).astype(bool)
    free = np.zeros(image.shape[:2], bool)
    free[:cut.shape[0], :cut.shape[1]] = ~cut
    outside[free] = 255 - outside[free]
    assert np.abs(_wrapper_native(wrapper, outside, masks)[0] - base[0]).max() > 1e-4


def test_the_released_mask_structure():
    """The reference's (N + HW)^2 mask as released: copies see themselves + their patches, patches see patches."""
    obj = torch.tensor([[1, 0], [0, 0], [1, 1]]).view(1, 3, 2)  # HW = 3 patches, N = 2 proposals
    m = released_attention_mask(obj)[0]
    inf = float("-inf")
    want = torch.tensor([[0, inf, 0, inf, 0],
                         [inf, 0, inf, inf, 0],
                         [inf, inf, 0, 0, 0],
                         [inf, inf, 0, 0, 0],
                         [inf, inf, 0, 0, 0]])
    assert torch.equal(m, want)


@pytest.mark.parametrize("n", [1, 2, 5, 12, 13, 30, 84])
def test_cubic_weights_equal_torch_bicubic_with_the_dino_scale(n):
    """The in-graph n x S weight matrix applied to a random S-row grid == F.interpolate(scale_factor=(n + 0.1)
    / S, mode="bicubic") as released (sampling by that factor, not S / n); the graph forms the scale in float32,
    torch in float64, hence 1e-5."""
    wrapper = cm.ClipMaskedWrapper(tok_clip().visual)
    s = wrapper.pos_side
    grid = torch.randn(1, 1, s, 3, generator=torch.Generator().manual_seed(n))
    want = F.interpolate(grid, scale_factor=((n + 0.1) / math.sqrt(s * s), 1.0), mode="bicubic")[0, 0]
    weights = wrapper._cubic_weights(torch.ones(n))
    assert want.shape == (n, 3) and weights.shape == (n, s)
    torch.testing.assert_close(weights @ grid[0, 0], want, atol=1e-5, rtol=0)


def test_position_embeddings_kept_at_the_own_square_size_and_interpolated_otherwise(model):
    _, visual, wrapper = model
    side = wrapper.pos_side * wrapper.stride[0]
    for h, w in ((side, side), (side, side + wrapper.stride[1] // 2), (side + 3 * wrapper.stride[0], side)):
        image = torch.zeros(1, 3, h, w)
        with torch.no_grad():
            got = wrapper.native_position(visual.conv1(image), image)
            want = released_position_embedding(visual, h, w)[1:]
        if (h, w) == (side, side):
            assert torch.equal(got, visual.positional_embedding[1:])
        elif got.shape == visual.positional_embedding[1:].shape:  # same grid, H != W: interpolated (quirk)
            assert (got - visual.positional_embedding[1:]).abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_native_masks_sample_like_torch_nearest():
    rng = np.random.default_rng(0)
    for h, w, s in ((96, 96, 8), (100, 61, 8), (480, 640, 16), (427, 640, 16), (333, 500, 16), (45, 70, 8)):
        masks = rng.random((2, h, w)) < 0.5
        want = released_patch_masks(masks, (s, s))[0].T.reshape(2, h // s, w // s).numpy()
        assert np.array_equal(released_native_masks(masks, (s, s)), want)
    with pytest.raises(ValueError, match="masks of 7x30 px are smaller than one 8x8 CLIP patch"):
        released_native_masks(np.ones((1, 7, 30), bool), (8, 8))


def test_reference_refuses_bad_inputs(model):
    _, visual, _ = model
    with pytest.raises(ValueError, match=r"masks must be N x 40 x 40 bool with N >= 1, got \(1, 40, 41\)"):
        released_soft_embeddings(visual, np.zeros((40, 40, 3), np.uint8), np.ones((1, 40, 41), bool), MEAN, STD)
    with pytest.raises(ValueError, match="image must be H x W x 3 uint8 RGB"):
        released_soft_embeddings(visual, np.zeros((40, 40, 3), np.float32), np.ones((1, 40, 40), bool), MEAN, STD)
