"""LSegPredictor: two-phase API, input validation, text cache use, results that make sense."""

import numpy as np
import pytest
from PIL import Image

from edgeseg.runtime.lseg import LSegPredictor
from edgeseg.runtime.metrics import mask_iou
from edgeseg.train.data.toyworld import SEEN_SHAPES, STUFF, ToyWorld

LABELS = list(SEEN_SHAPES) + list(STUFF)


@pytest.fixture()
def predictor(lseg_bundle, text_cache):
    return LSegPredictor(lseg_bundle, cache_dir=text_cache)


def test_predict_before_set_image(predictor):
    with pytest.raises(RuntimeError, match=r"call set_image\(image\) before predict"):
        predictor.predict(["circle"])


@pytest.mark.parametrize("bad, err, msg", [
    (np.zeros((96, 96, 3), np.float32), ValueError, "dtype float32.*astype"),
    (np.zeros((96, 96, 2), np.uint8), ValueError, r"shape \(96, 96, 2\)"),
    (np.zeros((3, 96, 96), np.uint8), ValueError, "channels last"),
    ([[0, 1]], TypeError, "type list is not supported"),
    ("does/not/exist.png", FileNotFoundError, "not found"),
])
def test_bad_images_are_refused(predictor, bad, err, msg):
    with pytest.raises(err, match=msg):
        predictor.set_image(bad)


def test_non_image_file(predictor, tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        predictor.set_image(p)


@pytest.mark.parametrize("labels, msg", [([], "non-empty list"), (["circle", "  "], "label 1"),
                                         (["circle", "circle"], "the same prompt"), (None, "non-empty list")])
def test_bad_labels(predictor, labels, msg):
    predictor.set_image(ToyWorld("seen", 0)[0].image)
    with pytest.raises(ValueError, match=msg):
        predictor.predict(labels)


def test_inputs_of_every_kind_agree_and_objects_are_found(predictor, tmp_path):
    scene = ToyWorld("seen", 5)[1]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    results = [predictor.segment(x, LABELS) for x in (scene.image, Image.fromarray(scene.image), str(path))]
    for r in results[1:]:
        assert np.array_equal(r.label_map, results[0].label_map)
    r = results[0]
    assert r.label_map.shape == (96, 96) and r.probabilities.shape == (len(LABELS), 96, 96)
    assert np.allclose(r.probabilities.sum(0), 1, atol=1e-4)
    assert set(r.timings_ms) == {"preprocess", "encoder", "text", "head", "postprocess"}
    assert r.provider == "CPUExecutionProvider"
    for k, o in enumerate(scene.objects):
        if o.area > 150:
            assert mask_iou(r.mask(o.shape), scene.semantic == scene.semantic[scene.instance_mask(k)][0]) > 0.5


def test_any_image_size_comes_back_at_its_own_size(predictor):
    img = np.asarray(Image.fromarray(ToyWorld("seen", 2)[0].image).resize((150, 110)))
    r = predictor.segment(img, "circle, star, grass")
    assert r.label_map.shape == (110, 150) and r.labels == ["circle", "star", "grass"]


def test_text_cache_hits_on_second_predict(predictor):
    predictor.set_image(ToyWorld("seen", 0)[0].image)
    a = predictor.predict(LABELS)
    stats = dict(predictor.text.cache.stats)
    b = predictor.predict(LABELS)
    assert predictor.text.cache.stats["memory_hits"] == stats["memory_hits"] + len(LABELS)
    assert predictor.text.cache.stats["encoded"] == stats["encoded"]
    assert np.array_equal(a.label_map, b.label_map)


def test_long_label_truncation_is_reported(predictor):
    predictor.set_image(ToyWorld("seen", 0)[0].image)
    long = " ".join(["red"] * 60) + " circle"
    r = predictor.predict(["grass", long])
    assert r.truncated_labels == [long]


def test_wrong_method_bundle(clip_bundle):
    with pytest.raises(ValueError, match="needs a bundle of method 'lseg'"):
        LSegPredictor(clip_bundle, cache_dir=None)
