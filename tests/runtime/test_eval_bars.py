"""The committed LSeg checkpoint, through the runtime, against the bars of the foundation issue."""

import pytest

from edgeseg.export.evaluation.segmentation import eval_lseg

N = 200


@pytest.fixture(scope="module")
def results(lseg_bundle, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {s: eval_lseg(lseg_bundle, s, n=N, seed=0, cache_dir=cache, progress=False)
            for s in ("seen", "unseen", "generalized")}


def test_seen_label_miou(results):
    assert results["seen"].miou >= 0.85, results["seen"].summary()


def test_zero_shot_unseen_miou(results):
    assert results["unseen"].miou >= 0.5, results["unseen"].summary()
    assert set(results["unseen"].per_class_iou) >= {"hexagon", "heart"}


def test_generalized_is_reported(results):
    r = results["generalized"]
    assert 0.0 < r.miou <= 1.0 and len(r.per_class_iou) == 14


def test_runtime_agrees_with_pytorch(lseg_bundle, tmp_path):
    r = eval_lseg(lseg_bundle, "generalized", n=40, seed=1, cache_dir=tmp_path, compare_torch="lseg_toy",
                  progress=False)
    assert r.torch_agreement >= 0.99, r.summary()
