"""Ref-Diff's stages alone (attention localizer, proposal generator, proposal scorer) give exactly what the
composed RefDiffPredictor reports; the predictor takes already-built stages and holds one image state."""

import inspect

import numpy as np
import pytest

from edgeseg.runtime.predictor_base import TwoPhasePredictor
from edgeseg.runtime.refdiff import DEFAULTS, ImageState, RefDiffPredictor
from edgeseg.runtime.refdiff_localize import LOCALIZER_DEFAULTS, AttentionLocalizer
from edgeseg.runtime.refdiff_proposals import ProposalGenerator, SamProposals
from edgeseg.runtime.refdiff_scorer import SCORER_DEFAULTS, ProposalScorer, ProposalScores
from edgeseg.runtime.refer_text import parse_expression
from edgeseg.train.data.refer import ReferWorld


@pytest.fixture(scope="module")
def pred(refdiff_bundle):
    return RefDiffPredictor(refdiff_bundle, cache_dir=None, preset="paper")


@pytest.fixture(scope="module")
def samples():
    world = ReferWorld(7)
    return [world[i] for i in range(3)]


def test_predictor_is_composed_not_a_label_predictor(pred):
    assert not isinstance(pred, TwoPhasePredictor)
    assert isinstance(pred.localizer, AttentionLocalizer) and isinstance(pred.generator, ProposalGenerator)
    assert isinstance(pred.scorer, ProposalScorer)
    assert "postprocess" not in inspect.signature(RefDiffPredictor).parameters
    filters = {"topk", "min_area", "min_area_fraction", "filtered_proposals"}  # the predictor's own (proposals)
    assert set(LOCALIZER_DEFAULTS) | set(SCORER_DEFAULTS) | {"proposals", "parser"} | filters == set(DEFAULTS)
    assert all(DEFAULTS[k] == v for k, v in {**LOCALIZER_DEFAULTS, **SCORER_DEFAULTS}.items())


def test_set_image_holds_one_image_state(pred, samples):
    img = samples[0].scene.image
    pred.set_image(img)
    st = pred.state
    assert isinstance(st, ImageState) and st.size == img.shape[:2] and np.array_equal(st.image, img)
    assert np.array_equal(st.latent, pred.localizer.encode(img))
    assert st.sam.dtype == bool and st.sam.shape[1:] == img.shape[:2] and ("sam", ()) in st.clip_memo
    assert {"preprocess", "vae_encoder", "sam_encoder", "sam_proposals", "clip_proposals"} == set(st.timings_ms)
    assert not any(hasattr(pred, a) for a in ("_latent", "_encoded", "_sam", "_image", "_clip_embeds"))


def test_generator_alone_gives_the_predictors_sam_proposals(refdiff_bundle, pred, samples):
    gen = ProposalGenerator(refdiff_bundle)
    for s in samples:
        props = gen(s.scene.image)
        assert isinstance(props, SamProposals) and not props.cached and len(props) == len(props.predicted_iou)
        pred.set_image(s.scene.image)
        res = pred.predict(s.expression.text, proposals="sam")
        assert set(res.sources) == {"sam"} and np.array_equal(res.proposals, props.masks)
    again = gen(samples[-1].scene.image)  # the same pixels: from the per-image cache, arrays shared, read-only
    assert again.cached and again.masks is props.masks and not again.masks.flags.writeable
    assert again.timings_ms == {"sam_encoder": 0.0, "sam_proposals": 0.0}
    assert not ProposalGenerator(refdiff_bundle, cache_size=0)(samples[-1].scene.image).cached


def test_localizer_alone_gives_the_predictors_attention(refdiff_bundle, pred, samples):
    loc = AttentionLocalizer(refdiff_bundle, cache_dir=None)
    s = samples[1]
    exprs = [s.expression.text, "the object on the left", "the star"]
    latent = loc.encode(s.scene.image)
    parsed = [parse_expression(e) for e in exprs]
    targets = loc.target_tokens(parsed)
    states = loc.text_states([p.text for p in parsed])
    assert states.shape == (3, 77, loc.uncond_states().shape[2]) and states.dtype == np.float32
    maps = loc.attention(latent, states, targets.indices, s.scene.image.shape[:2])
    assert maps.shape == (3, *s.scene.image.shape[:2]) and maps.dtype == np.float32
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    pred.set_image(s.scene.image)
    for res, c, tok in zip(pred.predict_many(exprs), maps, targets.indices):
        assert np.array_equal(res.attention, c) and res.target_token == tok
    with pytest.raises(ValueError, match="one token per expression"):
        loc.attention(latent, states, targets.indices[:1], s.scene.image.shape[:2])


@pytest.mark.parametrize("expression", [None, "the object on the left"])
def test_scorer_alone_gives_the_predictors_scores(refdiff_bundle, pred, samples, expression):
    scorer = ProposalScorer(refdiff_bundle, cache_dir=None)
    s = samples[2]
    pred.set_image(s.scene.image)
    res = pred.predict(expression or s.expression.text)
    got = scorer.score(s.scene.image, res.attention, res.proposals.full(), res.parsed)
    assert isinstance(got, ProposalScores) and got.best == res.best
    for k, v in got.as_dict().items():
        assert np.array_equal(v, res.scores[k]), k
    emb = scorer.embed(s.scene.image, res.proposals[:1])
    with pytest.raises(ValueError, match="embed the same masks"):
        scorer.scores(res.attention, res.proposals.full(), emb, scorer.text_embeddings([res.parsed])[0])


def test_predictor_takes_built_stages(refdiff_bundle, pred, samples):
    loc = AttentionLocalizer(refdiff_bundle, cache_dir=None, single_t=51)
    scorer = ProposalScorer(refdiff_bundle, cache_dir=None, position_bias="soft")
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, localizer=loc, generator=pred.generator, scorer=scorer,
                         preset="paper")
    assert p.localizer is loc and p.scorer is scorer and p.generator is pred.generator
    assert p.options["single_t"] == 51 and p.options["position_bias"] == "soft"
    ref = RefDiffPredictor(refdiff_bundle, cache_dir=None, single_t=51, position_bias="soft", preset="paper")
    s = samples[0]
    p.set_image(s.scene.image)
    ref.set_image(s.scene.image)
    a, b = p.predict(s.expression.text), ref.predict(s.expression.text)
    assert a.best == b.best and np.array_equal(a.attention, b.attention)
    assert all(np.array_equal(a.scores[k], b.scores[k]) for k in b.scores)
    with pytest.raises(ValueError, match="contradicts the given localizer's single_t"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, localizer=loc, single_t=1)
    with pytest.raises(TypeError, match="scorer must be a ProposalScorer"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, scorer=loc)


def test_stage_errors(refdiff_bundle):
    with pytest.raises(ValueError, match="unknown AttentionLocalizer option"):
        AttentionLocalizer(refdiff_bundle, cache_dir=None, stepz=3)
    with pytest.raises(ValueError, match=r"Ref-Diff option position_bias='left': must be one of \['hard', 'soft', 'both'\]"):
        ProposalScorer(refdiff_bundle, cache_dir=None, position_bias="left")
    with pytest.raises(ValueError, match="unknown amg option"):
        ProposalGenerator(refdiff_bundle, amg={"points": 4})
    with pytest.raises(ValueError, match="unknown Ref-Diff option"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, postprocess=False)


def test_a_stage_names_the_components_a_bundle_lacks(lseg_bundle):
    with pytest.raises(ValueError, match=r"AttentionLocalizer needs the components .* lacks \['sd_text'"):
        AttentionLocalizer(lseg_bundle, cache_dir=None)
    with pytest.raises(ValueError, match=r"ProposalScorer needs .* lacks \['clip_masked'\]"):
        ProposalScorer(lseg_bundle, cache_dir=None)
