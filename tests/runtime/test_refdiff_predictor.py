"""RefDiffPredictor (numpy + ONNX Runtime) against the PyTorch reference pipeline; batching; bad inputs."""

import dataclasses

import numpy as np
import pytest

from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.train.data.refer import ReferWorld


@pytest.fixture(scope="module")
def pred(refdiff_bundle, tmp_path_factory):
    return RefDiffPredictor(refdiff_bundle, cache_dir=tmp_path_factory.mktemp("cache"), preset="paper")


@pytest.fixture(scope="module")
def samples():
    world = ReferWorld(7)
    return [world[i] for i in range(4)]


def test_runtime_equals_pytorch_reference(pred, samples):
    from edgeseg.export.refdiff_reference import TorchRefDiff

    ref = TorchRefDiff("toy")
    for s in samples[:3]:
        pred.set_image(s.scene.image)
        res = pred.predict(s.expression.text)
        want = ref(s.scene.image, s.expression.text, res.proposals.full(), res.target_token, res.parsed.target_phrase,
                   res.parsed.directions)
        assert np.abs(res.attention - want["attention"]).max() < 1e-4
        for k in ("generative", "discriminative", "total"):
            np.testing.assert_allclose(res.scores[k], want[k], atol=1e-4, err_msg=k)
        assert res.best == want["best"]
        assert res.mask.shape == s.scene.image.shape[:2] and res.mask.dtype == bool


def test_predict_many_equals_single_predicts(pred, samples):
    s = samples[3]
    exprs = [s.expression.text, "the object on the left", "the star"]
    pred.set_image(s.scene.image)
    many = pred.predict_many(exprs)
    for e, r in zip(exprs, many):
        one = pred.predict(e)
        assert np.abs(one.attention - r.attention).max() < 1e-5
        np.testing.assert_allclose(one.scores["total"], r.scores["total"], atol=1e-5)
    assert {"unet", "text", "score", "vae_encoder", "sam_encoder", "sam_proposals"} <= set(many[0].timings_ms)


def test_result_reports_target_proposals_and_attention(pred, samples):
    s = samples[0]
    pred.set_image(s.scene.image)
    res = pred.predict("the red circle on the left", proposals="both")
    assert res.target_word == "circle" and res.parsed.directions == ["left"]
    assert set(res.sources) == {"sam", "threshold"} and len(res.sources) == len(res.proposals)
    assert res.attention.shape == s.scene.image.shape[:2] and 0 <= res.attention.min() and res.attention.max() <= 1
    # min-max normalized at the attention grid, then bilinear: the peak and floor soften a little
    assert res.attention.max() > 0.9 and res.attention.min() < 0.05


def test_bad_inputs(pred, samples, refdiff_bundle):
    fresh = RefDiffPredictor(refdiff_bundle, cache_dir=None)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict("the red circle")
    pred.set_image(samples[0].scene.image)
    with pytest.raises(ValueError, match="empty"):
        pred.predict("   ")
    with pytest.raises(ValueError, match="non-empty list"):
        pred.predict_many([])
    with pytest.raises(ValueError, match="proposals 'boxes'"):
        pred.predict("the star", proposals="boxes")
    with pytest.raises(ValueError, match="unknown Ref-Diff option"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, alpah=0.2)
    long = "the red circle " + " ".join(["very"] * 90) + " big"
    res = pred.predict(long)
    assert res.truncated and any("cut at 77 tokens" in w for w in res.warnings)
    res = pred.predict("red")
    assert not res.parsed.has_noun and res.warnings and res.mask.any()


def test_segmentation_loader_points_to_refer(refdiff_bundle):
    from edgeseg.runtime.predictors import load_predictor

    with pytest.raises(ValueError, match="edgeseg refer"):
        load_predictor(refdiff_bundle)


def test_parser_free_fallback_is_reported(refdiff_bundle, samples):
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, parser=None, preset="paper")
    p.set_image(samples[1].scene.image)
    res = p.predict("the green cross on the left")
    assert res.parsed.parser.startswith("fallback") and res.target_word == "cross"


@pytest.mark.parametrize("where", ["soft", "both"])
def test_runtime_equals_reference_for_each_position_bias_branch(refdiff_bundle, samples, where):
    from edgeseg.export.refdiff_reference import TorchRefDiff

    s = samples[2]  # a left/right expression: P is not all ones
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, position_bias=where, preset="paper")
    p.set_image(s.scene.image)
    res = p.predict(s.expression.text)
    assert res.parsed.directions
    want = TorchRefDiff("toy", position_bias=where)(s.scene.image, s.expression.text, res.proposals.full(),
                                                    res.target_token, res.parsed.target_phrase, res.parsed.directions)
    np.testing.assert_allclose(res.scores["discriminative"], want["discriminative"], atol=1e-4)


def test_no_proposal_at_all_falls_back_to_the_whole_image(refdiff_bundle, samples, monkeypatch):
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, proposals="thresholds", preset="paper")
    p.set_image(samples[0].scene.image)
    monkeypatch.setattr(p.localizer, "attention",
                        lambda latent, states, tokens, size: np.zeros((len(tokens), *size), np.float32))
    res = p.predict("the green cross")  # a flat map has no threshold proposal
    assert res.sources == ["image"] and res.mask.all() and any("no proposal at all" in w for w in res.warnings)
    # no SAM mask survived: the SAM source falls back to the thresholds, and says so
    no_sam = dataclasses.replace(p.state, sam=p.state.sam[:0])
    res = p.predict("the green cross", proposals="sam", state=no_sam)
    assert any("no SAM proposal survived" in w for w in res.warnings) and res.sources == ["image"]
