"""Ref-Diff scoring arithmetic: threshold proposals, s^G, s^D, patch masks, oIoU / mIoU."""

import numpy as np
import pytest

from edgeseg.runtime.refdiff_scores import (THRESHOLDS, ReferMetrics, discriminative_scores, generative_scores,
                                            intersection_union, masked_crops, normalize_map, patch_masks,
                                            threshold_proposals)


def test_thresholds_are_5_to_95_percent():
    assert THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 19


def test_threshold_proposals_nest_and_drop_empty():
    c = normalize_map(np.arange(100, dtype=np.float32).reshape(10, 10))
    props = threshold_proposals(c)
    areas = props.reshape(len(props), -1).sum(1)
    assert len(props) == 19 and (np.diff(areas) <= 0).all()  # higher threshold, smaller mask
    assert len(threshold_proposals(np.zeros((4, 4), np.float32))) == 0  # a flat map has no proposal above 5%


def test_generative_score_prefers_the_attended_region():
    c = np.zeros((8, 8), np.float32)
    c[2:5, 2:5] = 1.0
    inside, half, outside = np.zeros((3, 8, 8), bool)
    inside[2:5, 2:5] = True
    half[2:5, 2:8] = True
    outside[6:, 6:] = True
    s = generative_scores(c, np.stack([inside, half, outside]))
    assert s[0] == pytest.approx(1.0) and s[0] > s[1] > 0 > s[2]
    full = np.ones((1, 8, 8), bool)
    assert generative_scores(c, full)[0] == pytest.approx(c.mean())  # nothing outside: mean inside - 0


def test_discriminative_score_mixes_branches_with_beta():
    soft = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    hard = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    r = np.array([1.0, 0.0], np.float32)
    s = discriminative_scores(soft, hard, r, beta=0.3)
    v0 = np.array([0.3, 0.7]) / np.linalg.norm([0.3, 0.7])
    assert s[0] == pytest.approx(v0[0], rel=1e-6) and s[1] == pytest.approx(0.0, abs=1e-7)
    assert discriminative_scores(soft, hard, r, beta=1.0)[0] == pytest.approx(1.0)


def test_patch_masks_majority_and_never_empty():
    m = np.zeros((2, 16, 16), bool)
    m[0, :8, :8] = True  # exactly the top-left patch of a 2x2 grid
    m[1, 0, 0] = True  # a single pixel: keeps its best patch
    pm = patch_masks(m, (2, 2))
    assert pm.dtype == np.float32 and pm.shape == (2, 2, 2)
    assert pm[0].tolist() == [[1, 0], [0, 0]] and pm[1].tolist() == [[1, 0], [0, 0]]


def test_masked_crops_modes():
    img = np.full((6, 6, 3), 200, np.uint8)
    m = np.zeros((1, 6, 6), bool)
    m[0, 1:3, 2:5] = True
    masked = masked_crops(img, m, "mask")[0]
    assert masked.shape == img.shape and masked[0, 0].tolist() == [0, 0, 0] and masked[1, 2].tolist() == [200] * 3
    assert masked_crops(img, m, "crop")[0].shape == (2, 3, 3)
    with pytest.raises(ValueError, match="hard_branch 'box'"):
        masked_crops(img, m, "box")


def test_oiou_is_cumulative_and_miou_per_expression():
    m = ReferMetrics()
    gt_big, gt_small = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    gt_big[:, :5] = True
    gt_small[0, 0] = True
    m.update(gt_big.copy(), gt_big)  # IoU 1 on 50 pixels
    m.update(np.zeros_like(gt_small), gt_small)  # IoU 0 on 1 pixel
    assert m.miou == pytest.approx(0.5)
    assert m.oiou == pytest.approx(50 / 51)


def test_intersection_union_counts_pixels():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert intersection_union(a, b) == (4, 12)
    assert intersection_union(a, np.zeros_like(a)) == (0, 8)
