"""Ref-Diff presets: "released" (default) and "paper" are documented tables whose every difference is one validated
option; the released predictor on the toy bundle equals a reference recomputation from the released formulas."""

import numpy as np
import pytest

from edgeseg.runtime.refdiff import DEFAULTS, RefDiffPredictor
from edgeseg.runtime.refdiff_options import CHECKS, check_options
from edgeseg.runtime.refdiff_presets import PAPER, PRESETS, RELEASED_DIFF, differences
from edgeseg.runtime.refer_text import _load_pipeline
from edgeseg.train.data.refer import ReferWorld


@pytest.fixture(scope="module")
def released(refdiff_bundle):
    return RefDiffPredictor(refdiff_bundle, cache_dir=None)


@pytest.fixture(scope="module")
def samples():
    world = ReferWorld(5)
    return [world[i] for i in range(12)]


def test_presets_are_tables_whose_differences_are_validated_options():
    assert PRESETS["paper"] == PAPER == DEFAULTS
    assert set(differences()) == set(RELEASED_DIFF) - {k for k, v in RELEASED_DIFF.items() if PAPER[k] == v}
    assert all(k in CHECKS for k in PAPER)
    assert PRESETS["released"]["topk"] == 10 and PRESETS["released"]["min_area"] == 10000
    assert PRESETS["released"]["ddim_noise"] == "released_t_enc_index"
    assert differences()["hard_resize"] == ("clip_input", "shortest_side")
    with pytest.raises(ValueError, match=r"^Ref-Diff option hard_resize='224': must be one of "
                                         r"\['clip_input', 'shortest_side'\]$"):
        check_options({"hard_resize": "224"})


def test_released_is_the_default_and_the_toy_bundle_scales_min_area(released, refdiff_bundle):
    assert released.preset == "released"
    assert released.options == {**PRESETS["released"], "min_area": 100}
    assert released.localizer.timesteps() == [51, 1] and released.localizer.noise_timestep() == 101
    paper = RefDiffPredictor(refdiff_bundle, cache_dir=None, preset="paper")
    assert paper.options == PAPER and paper.localizer.noise_timestep() == 51
    with pytest.raises(ValueError, match="preset 'published' is not one of"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, preset="published")
    with pytest.raises(ValueError, match="Ref-Diff option ddim_noise='t51'"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, ddim_noise="t51")
    with pytest.raises(ValueError, match="needs vae_geometry='diffusion_pad'"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, vae_geometry="squash")


def _ref_token(tok, text: str, word: str) -> int:
    """get_textfeat: last non-pad index of the prefix's ids minus 1, capped by the sentence's (pad id 0)."""
    def ids(t):
        row, _ = tok.encode([t])
        row = np.where(row[0] == tok.pad_id, 0, row[0]) if tok.pad_id != tok.eot_id else row[0]
        if tok.pad_id == tok.eot_id:  # SD's tokenizer pads with eot: zero everything after the first eot
            end = int(np.nonzero(row[1:] == tok.eot_id)[0][0]) + 1
            row = np.concatenate([row[:end + 1], np.zeros(len(row) - end - 1, row.dtype)])
        return row
    core = np.where(ids(text[:text.find(word) + len(word)]) != 0)[0][-1] - 1
    sent = np.where(ids(text) != 0)[0][-1] - 1
    return int(min(core, sent))


def _ref_subject(nlp, text: str) -> str:
    for token in nlp(text):
        if "ROOT" in token.dep_ or "subj" in token.dep_:
            return str(token)
    return text


def test_released_predictor_equals_the_released_formulas_on_the_toy_bundle(released, samples):
    """Chosen proposal equal in every trial and scores within 1e-4 of a recomputation: top 10 by area with area >
    min_area, hard input (x*P)*M cut to the box at shortest side 96 (the toy CLIP's size), aspect kept (the torch
    reference of the released get_cliphard), soft input the unbiased image at its own size (the torch reference
    of the released get_clipsoft), t and k unmixed, 0.7/0.3/0.05."""
    from edgeseg.export.released_soft_reference import released_hard_embeddings, released_soft_embeddings
    from edgeseg.train.clip import load_clip

    toy_visual = load_clip("clip_toy")[0].eval().visual
    b, nlp = released.bundle, _load_pipeline(released.options["parser"])
    prep = b.preprocessing
    assert released.options["hard_resize"] == "shortest_side" and "clip_hard" in released.scorer.COMPONENTS
    wide = 0

    texts = [s.expression.text for s in samples] + ["the star on the left", "a circle to the right of the ring"]
    for i, text in enumerate(texts):
        s = samples[i % len(samples)]
        img = s.scene.image
        res = released.segment(img, text)
        word = _ref_subject(nlp, text)
        assert res.target_word == word and res.target_token == _ref_token(released.localizer.sd_tokenizer, text, word)
        allm = released.generator(img).masks
        areas = allm.reshape(len(allm), -1).sum(1)
        top = np.argsort(-areas, kind="stable")[:10]
        kept = allm[[j for j in sorted(top) if areas[j] > 100]]
        assert np.array_equal(res.proposals.full(), kept)
        h, w = img.shape[:2]
        k3 = w * 2 // 3
        ramp = (np.concatenate([np.linspace(1, 0, k3), np.zeros(w - k3)]) if "left" in text else
                np.concatenate([np.zeros(w - k3), np.linspace(0, 1, k3)]) if "right" in text else np.ones(w))
        pos = img * np.broadcast_to(ramp.reshape(1, w, 1), (h, w, 3))
        crops = []
        for m in kept:
            ys, xs = np.nonzero(m)
            crops.append((pos * m[..., None])[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8))
        wide += sum(c.shape[0] != c.shape[1] for c in crops)
        hard = released_hard_embeddings(toy_visual, crops, prep["mean"], prep["std"], size=96)  # T.Resize(96)
        soft = released_soft_embeddings(toy_visual, img, kept, prep["mean"], prep["std"])  # native size
        t, k = released.scorer.text.embed([res.parsed.text, word])
        c = res.attention
        diff = np.array([(c * m).sum() / (m.sum() + 1e-6) - (c * ~m).sum() / ((~m).sum() + 1e-6) for m in kept])
        total = 0.7 * (hard @ t) + 0.3 * (soft @ (0.5 * t + 0.5 * k)) + 0.05 * diff
        np.testing.assert_allclose(res.scores["total"], total, atol=1e-4)
        assert res.best == int(np.argmax(total)), text
    assert wide >= len(texts)  # non-square crops (the aspect-kept path) were scored


def test_the_multiply_by_zero_flag_keeps_dropped_proposals_at_score_zero(refdiff_bundle, samples):
    s = samples[0]
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, filtered_proposals="released_multiply_by_zero")
    allm = p.generator(s.scene.image).masks
    areas = allm.reshape(len(allm), -1).sum(1)
    cut = float(np.median(areas))
    p = RefDiffPredictor(refdiff_bundle, cache_dir=None, filtered_proposals="released_multiply_by_zero",
                         min_area=cut, localizer=p.localizer, generator=p.generator, scorer=p.scorer)
    res = p.segment(s.scene.image, s.expression.text)
    dropped = areas <= cut
    assert dropped.any() and not dropped.all() and len(res.proposals) == len(allm)
    assert (res.scores["total"][dropped] == 0).all() and res.best == int(np.argmax(res.scores["total"]))
    everything = RefDiffPredictor(refdiff_bundle, cache_dir=None, filtered_proposals="released_multiply_by_zero",
                                  min_area=float(areas.max()), localizer=p.localizer, generator=p.generator,
                                  scorer=p.scorer).segment(s.scene.image, s.expression.text)
    assert everything.best == 0 and (everything.scores["total"] == 0).all() and "filtered out" in everything.warnings[-1]


def test_released_localizer_noises_at_t101_runs_the_unet_at_51_and_1_and_adds_the_prompt_suffix(
        released, samples, monkeypatch):
    loc = released.localizer
    noised, unet_t = [], []
    add_noise, run = loc.schedule.add_noise, loc.bundle.run
    monkeypatch.setattr(loc.schedule, "add_noise", lambda x, n, t: (noised.append(int(t)), add_noise(x, n, t))[1])

    def spy(name, feeds):
        if name == "unet_attn":
            unet_t.append(int(feeds["timestep"][0]))
        return run(name, feeds)

    monkeypatch.setattr(loc.bundle, "run", spy)
    p = released.parse("the star on the left")
    assert loc.prompts([p]) == ["the star on the left, "] and p.directions == ["left"]
    img = samples[0].scene.image
    c = loc.attention(loc.encode(img), loc.text_states(loc.prompts([p])), [2], img.shape[:2])
    assert noised == [101] and unet_t == [51, 1]
    assert c.shape == (1, *img.shape[:2]) and c.min() == 0.0 and abs(float(c.max()) - 1.0) < 1e-6
