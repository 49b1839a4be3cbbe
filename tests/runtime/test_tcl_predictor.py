"""TCLPredictor: the common two-phase API, PAMR on/off, the background option, bad inputs, and agreement with
the PyTorch pipeline."""

import numpy as np
import pytest

from edgeseg.runtime import TCLPredictor, load_predictor
from edgeseg.runtime.metrics import mask_iou
from edgeseg.train.data.toyworld import SHAPES, STUFF, ToyWorld

LABELS = list(SHAPES) + list(STUFF)
STAGES = {"preprocess", "encoder", "text", "head", "postprocess"}


@pytest.fixture(scope="module")
def scene():
    return ToyWorld("all", 3)[1]


@pytest.fixture()
def predictor(tcl_bundle, text_cache):
    return TCLPredictor(tcl_bundle, cache_dir=text_cache)


def test_predict_returns_masks_and_a_label_map(predictor, scene):
    predictor.set_image(scene.image)
    res = predictor.predict(LABELS)
    assert res.labels == LABELS and res.label_map.shape == (96, 96) and res.label_map.dtype == np.int32
    assert res.probabilities.shape == (14, 96, 96) and res.probabilities.dtype == np.float32
    assert 0.0 <= res.probabilities.min() and res.probabilities.max() <= 1.0
    assert np.array_equal(res.label_map, res.probabilities.argmax(0))
    assert set(res.timings_ms) == STAGES and res.provider == "CPUExecutionProvider"
    assert res.background_threshold is None and res.truncated_labels == []
    assert mask_iou(res.mask(scene.stuff), scene.semantic == LABELS.index(scene.stuff)) > 0.8
    again = predictor.predict(", ".join(reversed(LABELS)))  # same image, other order: same segmentation
    assert np.mean(np.array(again.labels)[again.label_map] == np.array(res.labels)[res.label_map]) > 0.999


def test_pamr_switch_and_overrides(tcl_bundle, text_cache, scene):
    on = TCLPredictor(tcl_bundle, cache_dir=text_cache).segment(scene.image, LABELS)
    off = TCLPredictor(tcl_bundle, cache_dir=text_cache, postprocess=False).segment(scene.image, LABELS)
    few = TCLPredictor(tcl_bundle, cache_dir=text_cache, pamr_iterations=1, pamr_dilations=[1]).segment(
        scene.image, LABELS)
    assert not np.allclose(on.probabilities, off.probabilities)
    assert not np.allclose(on.probabilities, few.probabilities)
    assert load_predictor(tcl_bundle, "tcl", cache_dir=text_cache).pamr_dilations == (1, 2, 4, 8, 12, 24)


def test_background_threshold_only_when_asked(predictor, scene):
    predictor.set_image(scene.image)
    shapes = [s for s in SHAPES]
    res = predictor.predict(shapes, background=True)
    assert res.labels == shapes + ["background"] and res.background_threshold == 0.4
    assert res.probabilities.shape == (9, 96, 96) and np.all(res.probabilities[-1] == np.float32(0.4))
    best = res.probabilities[:-1].max(0)
    assert np.array_equal(res.label_map == 8, best < 0.4)
    assert (res.label_map == 8).any(), "a stuff-only region should fall to background without stuff labels"
    assert predictor.predict(shapes, background=1.0).label_map.max() == 8
    assert predictor.predict(shapes).label_map.max() < 8


@pytest.mark.parametrize("call, err, msg", [
    (lambda p: p.predict([]), ValueError, "non-empty list"),
    (lambda p: p.predict(["circle", ""]), ValueError, "non-empty string"),
    (lambda p: p.predict(["circle", "circle"]), ValueError, "the same prompt"),
    (lambda p: p.predict(["circle", "background"], background=True), ValueError, "added by background"),
    (lambda p: p.predict(["circle"], background=1.5), ValueError, r"threshold in \[0, 1\]"),
    (lambda p: p.predict(["circle"], background="yes"), ValueError, "background must be"),
])
def test_bad_predict_arguments(predictor, scene, call, err, msg):
    predictor.set_image(scene.image)
    with pytest.raises(err, match=msg):
        call(predictor)


def test_bad_images_and_order(predictor):
    with pytest.raises(RuntimeError, match=r"call set_image\(image\) before predict"):
        predictor.predict(["circle"])
    with pytest.raises(TypeError, match="type list is not supported"):
        predictor.set_image([[0, 1]])
    with pytest.raises(ValueError, match="dtype float32"):
        predictor.set_image(np.zeros((96, 96, 3), np.float32))


def test_wrong_bundle_and_settings(lseg_bundle, tcl_bundle, text_cache):
    with pytest.raises(ValueError, match="holds method 'lseg'; TCLPredictor needs a bundle of method 'tcl'"):
        TCLPredictor(lseg_bundle, cache_dir=text_cache)
    with pytest.raises(ValueError, match="holds method 'tcl', not 'lseg'"):
        load_predictor(tcl_bundle, "lseg", cache_dir=text_cache)
    with pytest.raises(ValueError, match="dilations must be a non-empty list"):
        TCLPredictor(tcl_bundle, cache_dir=text_cache, pamr_dilations=[])


def test_other_image_sizes_come_back_at_their_size(predictor, scene):
    from PIL import Image

    big = np.asarray(Image.fromarray(scene.image).resize((150, 120)))
    res = predictor.segment(big, LABELS)
    assert res.label_map.shape == (120, 150) and res.probabilities.shape == (14, 96, 96)  # the model's resolution
    full = predictor.segment(big, LABELS, full_probabilities=True)
    assert full.probabilities.shape == (14, 120, 150)
    assert np.array_equal(full.label_map, res.label_map) and np.array_equal(full.label_map, full.probabilities.argmax(0))
    bg = predictor.segment(big, LABELS, background=True)
    bg_full = predictor.segment(big, LABELS, background=True, full_probabilities=True)
    assert np.array_equal(bg.label_map, bg_full.label_map) and np.array_equal(bg_full.label_map,
                                                                             bg_full.probabilities.argmax(0))


def test_runtime_agrees_with_pytorch(tcl_bundle, tmp_path):
    from edgeseg.export.evaluation.segmentation import eval_method

    r = eval_method("tcl", tcl_bundle, "generalized", n=8, seed=1, cache_dir=tmp_path, compare_torch="tcl_toy",
                    progress=False)
    assert r.torch_agreement >= 0.99, r.summary()
