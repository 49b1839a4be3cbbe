"""Ref-Diff's soft branch in the runtime: ``soft_branch="released_native"`` (the released preset) feeds the toy
bundle's ``clip_masked`` the whole image at its own size and nearest-sampled masks and equals the torch reference
written from the released ``get_clipsoft`` (:mod:`edgeseg.export.released_soft_reference`); ``"resized"`` (the
paper preset) is the earlier branch, unchanged; sizes outside the manifest's native range are refused."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.runtime.refdiff_scorer import ProposalScorer
from edgeseg.runtime.images import preprocess
from edgeseg.runtime.refdiff_scores import patch_masks
from edgeseg.train.data.refer import ReferWorld


@pytest.fixture(scope="module")
def toy_visual():
    from edgeseg.train.clip import load_clip

    return load_clip("clip_toy")[0].eval().visual


@pytest.fixture(scope="module")
def native(refdiff_bundle):
    return ProposalScorer(refdiff_bundle, cache_dir=None, soft_branch="released_native")


def _masks(h: int, w: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        out[i, y0:y0 + rng.integers(6, h // 2), x0:x0 + rng.integers(6, w // 2)] = True
    return out


@pytest.mark.parametrize("crop", [None, (slice(3, 73), slice(0, 93)), (slice(0, 96), slice(10, 50))])
@pytest.mark.parametrize("n", [1, 3])
def test_released_native_scorer_equals_the_reference(native, toy_visual, crop, n):
    """A ToyWorld scene (96 x 96: the tower's own size, position embeddings as stored) and non-square cuts of it
    (interpolated position embeddings, sides not multiples of the 8 px stride); ONNX bundle vs torch reference."""
    from edgeseg.export.released_soft_reference import released_soft_embeddings

    image = ReferWorld(5)[n].scene.image
    if crop is not None:
        image = np.ascontiguousarray(image[crop])
    masks = _masks(*image.shape[:2], n, seed=n)
    got = native.embed(image, masks).masked
    prep = native.bundle.preprocessing
    want = released_soft_embeddings(toy_visual, image, masks, prep["mean"], prep["std"])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_paper_soft_branch_is_the_resized_one(refdiff_bundle):
    """soft_branch="resized": masked_embeds of the image resized to CLIP's size with coverage patch masks (the
    native inputs then get the min-size zeros and their output is not read)."""
    scorer = ProposalScorer(refdiff_bundle, cache_dir=None)
    assert scorer.options["soft_branch"] == "resized"
    image = ReferWorld(5)[0].scene.image
    masks = _masks(96, 96, 3, seed=0)
    b, prep = scorer.bundle, scorer.bundle.preprocessing
    grid = tuple(b.spec("clip_masked").input("patch_masks").shape[1:])
    crops = np.concatenate([preprocess(image * m[..., None].astype(np.uint8), prep) for m in masks])
    lo = b.spec("clip_masked").input("native_image").min
    out = b.run("clip_masked", {"image": preprocess(image, prep), "patch_masks": patch_masks(masks, grid),
                                "crops": crops, "native_image": np.zeros(lo, np.float32),
                                "native_masks": np.zeros((3, lo[2] // 8, lo[3] // 8), np.float32)})
    emb = scorer.embed(image, masks)
    assert np.array_equal(emb.masked, out["masked_embeds"]) and np.array_equal(emb.crop, out["crop_embeds"])
    native = ProposalScorer(refdiff_bundle, cache_dir=None, soft_branch="released_native").embed(image, masks)
    assert np.array_equal(native.crop, emb.crop) and np.abs(native.masked - emb.masked).max() > 1e-3


def test_sizes_outside_the_native_range_are_scaled_in_or_refused(native, refdiff_bundle):
    from PIL import Image

    spec = native.bundle.spec("clip_masked").input("native_image")
    assert (spec.min[2:], spec.max[2:]) == ((16, 16), (576, 576))
    for h, w in ((10, 600), (600, 10)):  # no single factor fits both sides
        with pytest.raises(ValueError) as err:
            native.embed(np.zeros((h, w, 3), np.uint8), np.ones((1, h, w), bool))
        assert str(err.value) == (f"image {h}x{w} cannot be scaled into clip_masked's native range 16x16 to "
                                  f"576x576 (soft_branch='released_native' runs CLIP at the image's own size) with "
                                  f"its aspect ratio kept: crop it, or use soft_branch='resized'")
    rng = np.random.default_rng(0)
    for (h, w), (nh, nw) in (((1500, 2000), (432, 576)), ((577, 80), (576, 79)), ((15, 40), (16, 42))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = np.zeros((2, h, w), bool)
        masks[0, : h // 2], masks[1, :, w // 3:] = True, True
        got = native.embed(image, masks).masked
        small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
        rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
        cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
        want = native.embed(small, masks[:, rows][:, :, cols]).masked
        np.testing.assert_allclose(got, want, atol=1e-6)
    ok = native.embed(np.zeros((16, 576, 3), np.uint8), np.ones((1, 16, 576), bool)).masked
    assert ok.shape == (1, 128)


def test_presets_choose_the_soft_branch(refdiff_bundle):
    released = RefDiffPredictor(refdiff_bundle, cache_dir=None)
    assert released.options["soft_branch"] == released.scorer.options["soft_branch"] == "released_native"
    paper = RefDiffPredictor(refdiff_bundle, cache_dir=None, preset="paper")
    assert paper.scorer.options["soft_branch"] == "resized"
    with pytest.raises(ValueError, match=r"Ref-Diff option soft_branch='native': must be one of "
                                         r"\['resized', 'released_native'\]"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, soft_branch="native")
    with pytest.raises(ValueError, match=r"Ref-Diff option soft_branch='native': must be one of "):
        ProposalScorer(refdiff_bundle, cache_dir=None, soft_branch="native")


@pytest.mark.parametrize("options, fed", [
    ({"soft_branch": "released_native", "hard_resize": "shortest_side"}, {"patch_masks": 1, "crops": 1}),
    ({"soft_branch": "resized", "hard_resize": "clip_input"}, {"native_masks": 1}),
    ({"soft_branch": "released_native", "hard_resize": "clip_input"}, {"patch_masks": 1}),
])
def test_unread_branches_get_one_proposal_a_call(refdiff_bundle, options, fed):
    """clip_masked's three branches have their own proposal axes: a branch whose output the options do not read
    gets one proposal a call (no N wasted CLIP passes), the read ones all N, with the embeddings of N-wide feeds."""
    scorer = ProposalScorer(refdiff_bundle, cache_dir=None, **options)
    assert scorer._apart is True  # every branch's proposal axis named apart
    image, masks = ReferWorld(5)[1].scene.image, _masks(96, 96, 5, seed=2)
    calls: list[dict[str, int]] = []
    run = scorer.bundle.run

    def record(name, feeds):
        if name == "clip_masked":
            calls.append({k: v.shape[0] for k, v in feeds.items() if k != "image" and k != "native_image"})
        return run(name, feeds)

    scorer.bundle.run = record
    try:
        got = scorer.embed(image, masks)
        scorer._apart = False  # as for bundles whose branches share one axis: every branch gets N
        wide = scorer.embed(image, masks)
    finally:
        scorer.bundle.run = run
    assert calls[0] == {k: fed.get(k, 5) for k in ("patch_masks", "crops", "native_masks")}
    assert calls[1] == {"patch_masks": 5, "crops": 5, "native_masks": 5}
    np.testing.assert_allclose(got.masked, wide.masked, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.crop, wide.crop, atol=1e-6, rtol=0)
