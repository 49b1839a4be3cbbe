"""edgeseg.runtime.sam_auto: SAM preprocessing, mask upsampling, stability / NMS, automatic mask generation
against segment_anything's own SamAutomaticMaskGenerator on the bundled toy SAM."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.sam_auto import (AMG_DEFAULTS, box_nms, generate_masks, mask_boxes, point_grid,
                                      postprocess_masks, sam_preprocess, stability_score)

PREP = {"img_size": 128, "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]}


def _square(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_stability_score_hand_made():
    logits = np.full((2, 10, 10), -5.0, np.float32)
    logits[0, :4, :5] = 3.0  # 20 px certain
    logits[0, 4:6, :5] = 0.5  # 10 px between -1 and +1: in the loose mask only
    logits[1] = -5.0  # empty: score 1 by convention
    s = stability_score(logits, 0.0, 1.0)
    assert s[0] == pytest.approx(20 / 30)
    assert s[1] == 1.0


def test_mask_boxes_inclusive_and_empty():
    m = np.stack([_square(8, 9, 2, 3, 5, 7), np.zeros((8, 9), bool)])
    np.testing.assert_array_equal(mask_boxes(m), [[3, 2, 6, 4], [0, 0, 0, 0]])


def test_box_nms_hand_made():
    masks = np.stack([_square(20, 20, 0, 0, 10, 10), _square(20, 20, 0, 0, 10, 9),  # IoU 0.89 with the first
                      _square(20, 20, 12, 12, 20, 20), _square(20, 20, 0, 0, 10, 5)])  # separate; IoU 0.44
    keep = box_nms(mask_boxes(masks), np.array([0.8, 0.9, 0.7, 0.95]), 0.7)
    assert keep.tolist() == [3, 1, 2]  # score order; mask 0 suppressed by the higher-scored mask 1


def test_point_grid_cell_centres():
    g = point_grid(4)
    assert g.shape == (16, 2)
    np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])  # x fastest
    np.testing.assert_allclose(g[::4, 1], [0.125, 0.375, 0.625, 0.875])
    with pytest.raises(ValueError, match="points_per_side"):
        point_grid(0)


def test_preprocess_matches_segment_anything():
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from segment_anything.utils.transforms import ResizeLongestSide

    from edgeseg.train.sam import build_sam

    sam = build_sam("toy-tiny")
    rng = np.random.default_rng(0)
    for h, w in ((96, 64), (50, 96)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x, hw = sam_preprocess(image, PREP)
        resized = ResizeLongestSide(128).apply_image(image)
        ref = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float()).numpy()
        assert hw == resized.shape[:2]
        np.testing.assert_allclose(x, ref, atol=1e-5)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        sam_preprocess(np.zeros((4, 4), np.uint8), PREP)


@pytest.mark.parametrize("original_hw", [(75, 96), (96, 40), (96, 96)])
def test_postprocess_matches_torch(original_hw):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from edgeseg.runtime.sam_auto import preprocess_shape

    low = np.random.default_rng(1).normal(size=(3, 64, 64)).astype(np.float32)
    input_hw = preprocess_shape(*original_hw, 128)
    ref = F.interpolate(torch.from_numpy(low)[None], (128, 128), mode="bilinear", align_corners=False)
    ref = ref[..., :input_hw[0], :input_hw[1]]
    ref = F.interpolate(ref, original_hw, mode="bilinear", align_corners=False)[0].numpy()
    out = postprocess_masks(low, input_hw, original_hw, 128)
    assert out.shape == (3, *original_hw)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    with pytest.raises(ValueError, match="input_hw"):
        postprocess_masks(low, (200, 96), original_hw, 128)


def _reference_amg(sam, image: np.ndarray, amg: dict) -> list[np.ndarray]:
    """segment_anything's generator with the same settings, then our extra filters (area, top-k by area)."""
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam, points_per_side=amg["points_per_side"], points_per_batch=amg["batch"],
                                    pred_iou_thresh=amg["pred_iou_thresh"],
                                    stability_score_thresh=amg["stability_score_thresh"],
                                    stability_score_offset=amg["stability_offset"],
                                    box_nms_thresh=amg["box_nms_thresh"], min_mask_region_area=0)
    anns = [a for a in gen.generate(image) if a["area"] >= amg["min_mask_area"]]
    anns.sort(key=lambda a: -a["area"])
    return [a["segmentation"] for a in anns[:amg["top_k"]]]


def test_generate_masks_matches_segment_anything_generator():
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig
    from edgeseg.train.sam import load_sam
    from edgeseg.train.train_sam import torch_decoder

    torch.set_num_threads(1)
    sam, cfg = load_sam("sam_toy")
    amg = dict(cfg.get("metrics", {}).get("amg") or AMG_DEFAULTS)
    world = ToyWorld("seen", 0, ToyWorldConfig(size=96))
    total = 0
    for index in (3, 11):
        scene = world[index]
        x, hw = sam_preprocess(scene.image, cfg["preprocessing"])
        with torch.no_grad():
            emb = sam.image_encoder(torch.from_numpy(x)).numpy()
        masks, iou, stab = generate_masks(torch_decoder(sam), emb, (96, 96), hw, amg,
                                          img_size=cfg["preprocessing"]["img_size"])
        again = generate_masks(torch_decoder(sam), emb, (96, 96), hw, amg, img_size=128)[0]
        np.testing.assert_array_equal(masks, again)  # deterministic
        ref = _reference_amg(sam, scene.image, amg)
        assert len(masks) == len(ref)
        assert masks.dtype == bool and masks.shape[1:] == (96, 96)
        assert (iou > amg["pred_iou_thresh"]).all() and (stab >= amg["stability_score_thresh"]).all()
        areas = masks.sum((1, 2))
        assert (np.diff(areas) <= 0).all()  # largest first
        for r in ref:
            match = max((m & r).sum() / max((m | r).sum(), 1) for m in masks)
            assert match > 0.99
        total += len(masks)
    assert total >= 4  # the trained toy SAM proposes objects and stuff on both scenes


def test_generate_masks_needs_img_size():
    with pytest.raises(ValueError, match="img_size"):
        generate_masks(lambda f: {}, np.zeros((1, 64, 16, 16), np.float32), (96, 96), (128, 128),
                       {"points_per_side": 2})
