"""IFSegPredictor: the common two-phase API, kNN post-processing on and off, input validation, the registry."""

import numpy as np
import pytest
from PIL import Image

from edgeseg.runtime import IFSegPredictor, load_predictor
from edgeseg.runtime.knn import knn_refine
from edgeseg.runtime.images import resize_maps
from edgeseg.train.data.toyworld import SHAPES, STUFF, ToyWorld

LABELS = list(SHAPES) + list(STUFF)


@pytest.fixture()
def predictor(ifseg_bundle, text_cache):
    return IFSegPredictor(ifseg_bundle, cache_dir=text_cache)


def test_predict_before_set_image(predictor):
    with pytest.raises(RuntimeError, match=r"call set_image\(image\) before predict"):
        predictor.predict(["circle"])


@pytest.mark.parametrize("bad, err, msg", [
    (np.zeros((96, 96, 3), np.float32), ValueError, "dtype float32"),
    (np.zeros((96, 96, 2), np.uint8), ValueError, r"shape \(96, 96, 2\)"),
    ([[0, 1]], TypeError, "type list is not supported"),
    ("does/not/exist.png", FileNotFoundError, "not found"),
])
def test_bad_images_are_refused(predictor, bad, err, msg):
    with pytest.raises(err, match=msg):
        predictor.set_image(bad)


@pytest.mark.parametrize("labels, msg", [([], "non-empty list"), (["circle", ""], "label 1"),
                                         (["sand", "sand"], "the same prompt")])
def test_bad_labels(predictor, labels, msg):
    predictor.set_image(ToyWorld("all", 0)[0].image)
    with pytest.raises(ValueError, match=msg):
        predictor.predict(labels)


def test_wrong_bundle_method(lseg_bundle, text_cache):
    with pytest.raises(ValueError, match="holds method 'lseg'; IFSegPredictor needs a bundle of method 'ifseg'"):
        IFSegPredictor(lseg_bundle, cache_dir=text_cache)
    with pytest.raises(ValueError, match="holds method 'lseg', not 'ifseg'"):
        load_predictor(lseg_bundle, "ifseg", cache_dir=text_cache)


@pytest.mark.parametrize("kwargs, msg", [({"knn_k": 0}, "knn_k must be >= 1"),
                                         ({"knn_iterations": -2}, "knn_iterations must be >= 0")])
def test_bad_knn_settings(ifseg_bundle, text_cache, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        IFSegPredictor(ifseg_bundle, cache_dir=text_cache, **kwargs)


def ifseg_bundle_grid(predictor) -> tuple[int, int]:
    return predictor.bundle.spec("ifseg_head").input("dense_embeds").shape[2:]


def test_result_and_registry(ifseg_bundle, predictor, text_cache, tmp_path):
    scene = ToyWorld("all", 3)[0]
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    r = predictor.segment(scene.image, LABELS)
    assert r.labels == LABELS and r.label_map.shape == (96, 96) and r.label_map.dtype == np.int32
    grid = tuple(ifseg_bundle_grid(predictor))
    assert r.probabilities.shape == (14, *grid) and r.probabilities.dtype == np.float32  # the head's resolution
    assert np.allclose(r.probabilities.sum(0), 1, atol=1e-4)
    assert set(r.timings_ms) == {"preprocess", "encoder", "text", "head", "postprocess"}
    assert r.provider == "CPUExecutionProvider" and r.postprocess and r.truncated_labels == []
    assert np.array_equal(predictor.segment(str(path), LABELS).label_map, r.label_map)
    assert (r.mask(scene.stuff) == (scene.semantic == LABELS.index(scene.stuff))).mean() > 0.8
    assert type(load_predictor(ifseg_bundle, cache_dir=text_cache)) is IFSegPredictor
    assert predictor.bundle.manifest["method_config"]["knn"] == {"k": 3, "iterations": 25}


def test_postprocess_is_knn_on_the_head_softmax(ifseg_bundle, text_cache):
    """postprocess=False gives the plain head softmax; postprocess=True is exactly runtime.knn on it; K=1 is
    the identity."""
    scene = ToyWorld("all", 4)[1]
    on = IFSegPredictor(ifseg_bundle, cache_dir=text_cache)
    off = IFSegPredictor(ifseg_bundle, cache_dir=text_cache, postprocess=False)
    k1 = IFSegPredictor(ifseg_bundle, cache_dir=text_cache, knn_k=1)
    r_on, r_off, r_k1 = (p.segment(scene.image, LABELS, full_probabilities=True) for p in (on, off, k1))
    assert not r_off.postprocess
    assert np.allclose(r_k1.probabilities, r_off.probabilities, atol=1e-6)
    features = on.encode(scene.image).encoded["dense_embeds"]
    dense = features[0]
    logits = on.bundle.run("ifseg_head", {"dense_embeds": features, "text_embeds": on.text.embed(LABELS)})["logits"][0]
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    assert np.allclose(resize_maps(probs.astype(np.float32), (96, 96)), r_off.probabilities, atol=1e-5)
    want = resize_maps(knn_refine(probs, dense, 3, 25), (96, 96))
    assert np.allclose(want, r_on.probabilities, atol=1e-5)
    assert not np.allclose(r_on.probabilities, r_off.probabilities, atol=1e-3), "kNN changed nothing"


def test_any_image_size_and_label_count(predictor):
    img = np.asarray(Image.fromarray(ToyWorld("all", 2)[0].image).resize((130, 70)))
    r = predictor.segment(img, "circle, grass")
    assert r.label_map.shape == (70, 130) and r.labels == ["circle", "grass"]
    r = predictor.predict(["hexagon"])
    assert (r.label_map == 0).all() and np.allclose(r.probabilities, 1)
