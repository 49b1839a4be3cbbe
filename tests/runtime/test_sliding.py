"""Sliding windows: the two official tilings (PyTorch-Encoding's pad tiling for lang-seg, mmseg's shifted
tiling for TCL), blending, and sliding-window inference through every segmentation predictor on the ToyWorld
bundles (windows of the encoder's size over an image at its own size)."""

import math

import numpy as np
import pytest

from edgeseg.runtime import load_predictor
from edgeseg.runtime.sliding import SlidingWindow
from edgeseg.train.data.toyworld import SHAPES, STUFF, ToyWorld

LABELS = list(SHAPES) + list(STUFF)


def _encoding_boxes(h, w, crop, stride):
    """MultiEvalModule.forward's grid, verbatim in structure (pad to the crop first)."""
    ph, pw = max(h, crop), max(w, crop)
    hg, wg = int(math.ceil(1.0 * (ph - crop) / stride)) + 1, int(math.ceil(1.0 * (pw - crop) / stride)) + 1
    return [(i * stride, min(i * stride + crop, ph), j * stride, min(j * stride + crop, pw))
            for i in range(hg) for j in range(wg)]


def _mmseg_boxes(h, w, crop, stride):
    """mmseg slide_inference's grid."""
    out = []
    for i in range(max(h - crop + stride - 1, 0) // stride + 1):
        for j in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


@pytest.mark.parametrize("hw", [(347, 520), (520, 520), (520, 347), (300, 300), (480, 1200)])
def test_pad_tiling_is_multievalmodules(hw):
    plan = SlidingWindow.plan(hw, 480, 320, "pad")
    assert list(plan.boxes) == _encoding_boxes(*hw, 480, 320)
    assert plan.padded == (max(hw[0], 480), max(hw[1], 480))


@pytest.mark.parametrize("hw", [(448, 672), (448, 448), (448, 2048), (672, 448), (448, 673)])
def test_shift_tiling_is_mmsegs(hw):
    plan = SlidingWindow.plan(hw, 448, 224, "shift")
    assert list(plan.boxes) == _mmseg_boxes(*hw, 448, 224)
    assert all(y1 - y0 == 448 and x1 - x0 == 448 for y0, y1, x0, x1 in plan.boxes)


def test_blend_is_the_mean_of_the_windows_covering_each_pixel():
    plan = SlidingWindow.plan((5, 7), 4, 2, "shift")
    canvas = np.arange(35, dtype=np.float32).reshape(1, 1, 5, 7)
    tiles = plan.cut(canvas)
    assert tiles.shape == (len(plan), 1, 4, 4)
    assert np.allclose(plan.blend(tiles)[0], canvas[0, 0])  # windows of the same canvas average back to it
    pad = SlidingWindow.plan((3, 5), 4, 3, "pad")
    t = pad.cut(np.ones((1, 3, 3, 5), np.float32), pad_value=np.array([-1, -2, -3], np.float32))
    assert t.shape == (2, 3, 4, 4) and np.all(t[0, 1, 3] == -2) and np.all(t[1, :, :3, :2] == 1)
    assert np.allclose(pad.blend(np.ones((2, 2, 4, 4), np.float32)), 1.0) and pad.blend(t[:, :2]).shape == (2, 3, 5)


@pytest.mark.parametrize("window, stride, msg", [
    (0, None, "window must be a positive integer"),
    ((4, 4, 4), None, "window must be"),
    (4, 5, r"stride \(5, 5\) is larger than the window \(4, 4\)"),
])
def test_bad_windows_are_refused(window, stride, msg):
    with pytest.raises(ValueError, match=msg):
        SlidingWindow.plan((10, 10), window, stride)


@pytest.fixture(scope="module")
def wide():
    """A 96 x 208 image: two ToyWorld scenes side by side with a 16 px strip between them."""
    a, b = ToyWorld("all", 5)[0], ToyWorld("all", 5)[1]
    return a, b, np.concatenate([a.image, np.full((96, 16, 3), 127, np.uint8), b.image], axis=1)


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg"])
def test_every_segmentation_method_slides_over_a_wide_image(request, method, wide, tmp_path):
    a, b, image = wide
    pred = load_predictor(request.getfixturevalue(f"{method}_bundle"), cache_dir=tmp_path)
    assert pred.tiling(image.shape[:2]) is None  # ToyWorld bundles: one resized image unless asked
    res = pred.segment(image, LABELS, window=96, stride=56)
    st = pred._local.state
    assert st.tiling.describe() == {"canvas": [96, 208], "window": [96, 96], "stride": [56, 56], "mode": "shift",
                                    "tiles": 3}
    assert res.label_map.shape == (96, 208) and res.probabilities.shape == (14, 96, 208)
    # the windows at both ends see one scene each, at the encoder's own size: as good as each scene alone
    alone = pred.segment(a.image, LABELS)
    assert np.mean(res.label_map[:, :96] == alone.label_map) > 0.9
    assert np.mean(np.array(LABELS)[res.label_map[:, -96:]] == np.array(LABELS)[b.semantic.clip(0, 13)]) > 0.5


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg"])
def test_one_window_at_the_encoder_size_equals_the_plain_prediction(request, method, tmp_path):
    scene = ToyWorld("all", 3)[1]
    pred = load_predictor(request.getfixturevalue(f"{method}_bundle"), cache_dir=tmp_path)
    plain = pred.predict(LABELS, state=pred.encode(scene.image), full_probabilities=True)
    tiled = pred.predict(LABELS, state=pred.encode(scene.image, window=96), full_probabilities=True)
    assert np.abs(plain.probabilities - tiled.probabilities).max() < 1e-5
    assert np.mean(plain.label_map == tiled.label_map) > 0.999


def test_a_window_other_than_the_encoders_input_is_refused(lseg_bundle, tmp_path):
    pred = load_predictor(lseg_bundle, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"window \[64, 64\] differs from this bundle's encoder input \[96, 96\] "
                                         r"\(a fixed-size graph\); pass window=96"):
        pred.segment(np.zeros((120, 150, 3), np.uint8), LABELS, window=64)
    with pytest.raises(ValueError, match=r"stride 32 given without sliding windows \(this bundle encodes one resized "
                                         r"image by default\); pass window=96 too"):
        pred.segment(np.zeros((120, 150, 3), np.uint8), LABELS, stride=32)


def test_tiles_go_through_the_encoder_in_batches_of_its_max(lseg_bundle, tmp_path, monkeypatch):
    pred = load_predictor(lseg_bundle, cache_dir=tmp_path)
    calls = []
    run = pred.bundle.run
    monkeypatch.setattr(pred.bundle, "run", lambda name, feeds: calls.append((name, len(next(iter(feeds.values())))))
                        or run(name, feeds))
    image = np.tile(ToyWorld("all", 3)[1].image, (2, 3, 1))  # 192 x 288: 3 x 5 windows at stride 48
    res = pred.segment(image, LABELS, window=96, stride=48)
    enc = [n for c, n in calls if c == "lseg_encoder"]
    assert sum(enc) == 15 and max(enc) == pred.bundle.spec("lseg_encoder").input("image").max[0] == 4
    assert res.label_map.shape == (192, 288)


def test_the_cli_segments_with_windows_and_refuses_order_for_other_methods(lseg_bundle, wide, tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    Image.fromarray(wide[2]).save(tmp_path / "wide.png")
    cmd = [sys.executable, "-m", "edgeseg.cli", "segment", str(tmp_path / "wide.png"), "--labels", "circle,grass",
           "--bundle", str(lseg_bundle), "--cache-dir", str(tmp_path / "cache")]
    out = subprocess.run(cmd + ["--window", "96", "--stride", "56", "--out", str(tmp_path / "o.png")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "o.png").size[0] >= 208 and set(json.loads(out.stdout)["pixel_share"]) == {"circle",
                                                                                                          "grass"}
    bad = subprocess.run(cmd + ["--order", "mix-first"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("holds method 'lseg': drop --order")
