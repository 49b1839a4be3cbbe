"""Process-level resources of the Ref-Diff runtime: ONNX Runtime memory profiles per session (what each session
got, same outputs), closing a session, the spaCy pipeline loaded once per process (memo shared by predictors
and threads), and stage progress on stderr only when asked."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeseg.runtime import Bundle  # noqa: E402
from edgeseg.runtime import refer_text as rt  # noqa: E402
from edgeseg.runtime.session import MEMORY_PROFILES, OrtMemory, memory_options  # noqa: E402


def test_memory_profiles_reach_onnxruntime_and_keep_the_outputs(lseg_bundle):
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    got = {}
    for profile in ("speed", "low"):
        b = Bundle(lseg_bundle, memory=profile)
        got[profile] = b.run("lseg_encoder", {"image": x})["pixel_embeds"]
        opts = b.session("lseg_encoder").inference_session.get_session_options()
        low = profile == "low"
        assert opts.enable_cpu_mem_arena is not low and opts.enable_mem_pattern is not low
        assert opts.get_session_config_entry("session.disable_prepacking") == "0"
        assert b.memory_used() == {"lseg_encoder": MEMORY_PROFILES[profile].to_dict()}
    np.testing.assert_allclose(got["low"], got["speed"], rtol=1e-5, atol=1e-5)


def test_auto_is_the_default_profile_a_custom_one_applies_and_bad_names_are_refused(lseg_bundle, monkeypatch):
    from edgeseg.runtime import session as session_module

    b = Bundle(lseg_bundle)
    assert b.memory == "auto"
    b.session("lseg_encoder")  # a toy bundle (a few MB of weights): ONNX Runtime's defaults
    assert b.memory_used()["lseg_encoder"] == OrtMemory().to_dict()
    monkeypatch.setattr(session_module, "AUTO_LOW_BYTES", 1)  # as if its weights were >= 1 GiB
    big = Bundle(lseg_bundle)
    big.session("lseg_encoder")
    assert big.memory_used()["lseg_encoder"] == OrtMemory(cpu_arena=False, mem_pattern=False, max_batch=1).to_dict()
    assert memory_options("speed") == OrtMemory()
    custom = OrtMemory(cpu_arena=False, mem_pattern=False, prepacking=False)
    c = Bundle(lseg_bundle, memory=custom)
    assert c.session("lseg_encoder").inference_session.get_session_options().get_session_config_entry(
        "session.disable_prepacking") == "1"
    with pytest.raises(ValueError, match=r"memory profile 'tiny' is not one of \['auto', 'low', 'speed'\]"):
        Bundle(lseg_bundle, memory="tiny")


def test_low_profile_runs_a_batch_one_by_one_with_the_same_outputs(refdiff_bundle, monkeypatch):
    from edgeseg.runtime.session import OrtSession

    spec = Bundle(refdiff_bundle).spec("unet_attn")
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal([2 if i == 0 else (d if isinstance(d, int) else t.opt[i])
                                          for i, d in enumerate(t.shape)]).astype(t.dtype) for t in spec.inputs}
    calls = []
    real = OrtSession.run
    monkeypatch.setattr(OrtSession, "run", lambda self, f: calls.append(len(next(iter(f.values())))) or real(self, f))
    fast = Bundle(refdiff_bundle, memory="speed").run("unet_attn", feeds)
    assert calls == [2]
    low = Bundle(refdiff_bundle, memory="low").run("unet_attn", feeds)
    assert calls == [2, 1, 1]
    for name in fast:
        assert low[name].shape == fast[name].shape
        np.testing.assert_allclose(low[name], fast[name], rtol=1e-4, atol=1e-5)
    sam = Bundle(refdiff_bundle, memory="low")  # no "batch" leading axis (prompts): never split
    emb = rng.standard_normal(sam.spec("sam_decoder").input("image_embeddings").shape).astype(np.float32)
    calls.clear()
    sam.run("sam_decoder", {"image_embeddings": emb, "point_coords": rng.random((3, 2, 2)).astype(np.float32),
                            "point_labels": np.ones((3, 2), np.float32)})
    assert len(calls) == 1


def test_close_drops_the_session_and_the_next_run_reopens_it(lseg_bundle):
    b = Bundle(lseg_bundle)
    first = b.session("lseg_encoder")
    assert b.close("lseg_encoder") and not b.close("lseg_encoder")
    assert "lseg_encoder" not in b.providers_used
    assert b.session("lseg_encoder") is not first


def test_spacy_pipeline_is_loaded_once_for_every_predictor_and_thread(refdiff_bundle, monkeypatch):
    spacy = pytest.importorskip("spacy")
    real = spacy.load
    try:
        real(rt.DEFAULT_PIPELINE)
    except OSError:
        pytest.skip(f"spaCy pipeline {rt.DEFAULT_PIPELINE} not installed")
    from edgeseg.runtime.refdiff import RefDiffPredictor

    calls: list[str] = []

    def counting(name, **kwargs):
        calls.append(name)
        time.sleep(0.2)  # a slow load: threads asking meanwhile must wait for it, not load again
        return real(name, **kwargs)

    monkeypatch.setattr(spacy, "load", counting)
    monkeypatch.setattr(rt, "_NLP_CACHE", {})
    monkeypatch.setattr(rt, "_NLP_FAILED", {})
    a, b = RefDiffPredictor(refdiff_bundle, cache_dir=None), RefDiffPredictor(refdiff_bundle, cache_dir=None)
    parsed = []
    threads = [threading.Thread(target=lambda p=p: parsed.append(p.parse("the red circle on the left")))
               for p in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parsed.append(b.parse("the star"))
    assert calls == [rt.DEFAULT_PIPELINE]
    assert {p.parser for p in parsed} == {f"spacy:{rt.DEFAULT_PIPELINE}"}


def test_progress_only_when_asked(refdiff_bundle, capsys):
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    sample = ReferWorld(5, ToyWorldConfig(size=96))[0]
    quiet = RefDiffPredictor(refdiff_bundle, cache_dir=None, parser=None)
    quiet.segment(sample.scene.image, sample.expression.text)
    assert "[refdiff]" not in capsys.readouterr().err
    messages: list[str] = []
    pred = RefDiffPredictor(refdiff_bundle, cache_dir=None, parser=None, progress=messages.append)
    pred.segment(sample.scene.image, sample.expression.text)
    stages = ("VAE encoder", "SAM encoder", "CLIP proposals", "UNet", "scoring")
    assert all(any(m.startswith(s) or f"; {s}" in m for m in messages) for s in stages), messages
    assert "[refdiff]" not in capsys.readouterr().err  # a callable gets the messages, stderr stays quiet
    loud = RefDiffPredictor(refdiff_bundle, cache_dir=None, parser=None, progress=True, keep_sessions=False)
    loud.segment(sample.scene.image, sample.expression.text)
    err = capsys.readouterr().err
    assert "[refdiff] VAE encoder" in err and "[refdiff] UNet" in err
    assert not {"vae_encoder", "sam_encoder", "sam_decoder"} & set(loud.bundle.providers_used)  # closed
    assert {"sd_text", "unet_attn", "clip_masked"} <= set(loud.bundle.providers_used)
    with pytest.raises(ValueError, match="progress must be None, a bool or a callable taking a message, got 3"):
        RefDiffPredictor(refdiff_bundle, cache_dir=None, progress=3)
