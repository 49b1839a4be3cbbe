"""TensorRT path: the engine-cache key, optimization profiles from the manifest, the refusal of engines built
for another TensorRT / GPU, and honest failures where TensorRT is absent. The engine build and run tests need
TensorRT + a GPU and skip with the reason otherwise (TensorRT cannot be installed in this project's CI)."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from edgeseg.runtime import Bundle, BundleError
from edgeseg.runtime.trt_backend import check_engine, engine_key, profile_from_spec

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installed (it cannot be installed in this "
                                                    "environment; run on a Jetson / GPU server with TensorRT 10.3+)")

KEY_ARGS = dict(onnx_sha256="a" * 64, recipe_hash="r1", profile=[{"name": "image", "min": [1, 3, 96, 96],
                "opt": [1, 3, 96, 96], "max": [4, 3, 96, 96]}], compute_capability="8.7",
                tensorrt_version="10.3.0", opt_level=3)


def test_engine_key_is_stable_and_covers_every_fact():
    base = engine_key(**KEY_ARGS)
    assert base == engine_key(**KEY_ARGS) and len(base) == 32
    changed = {"onnx_sha256": "b" * 64, "recipe_hash": "r2", "compute_capability": "9.0",
               "tensorrt_version": "11.0.0", "opt_level": 5,
               "profile": [dict(KEY_ARGS["profile"][0], max=[8, 3, 96, 96])]}
    for field, value in changed.items():
        assert engine_key(**dict(KEY_ARGS, **{field: value})) != base, f"{field} does not change the key"


def test_profile_from_manifest_spec(lseg_bundle):
    comps = Bundle(lseg_bundle).components
    (image,) = profile_from_spec(comps["lseg_encoder"])
    assert image["name"] == "image" and image["min"][0] == 1 and image["max"][0] == 4
    assert image["min"][1:] == image["max"][1:] == [3, 96, 96]
    head = profile_from_spec(comps["lseg_head"])
    assert [p["name"] for p in head] == ["pixel_embeds", "text_embeds"]
    assert all(p["min"] <= p["opt"] <= p["max"] for p in head)
    broken = json.loads(json.dumps(comps["lseg_encoder"]))
    for k in ("min", "opt", "max"):
        del broken["inputs"][0][k]
    with pytest.raises(BundleError, match="no min/opt/max"):
        profile_from_spec(broken)


def test_engine_for_another_tensorrt_or_gpu_is_refused():
    engine = {"file": "lseg_encoder.plan", "tensorrt": "10.3.0", "compute_capability": "8.7", "gpu": "Orin",
              "command": "edgeseg build engines/lseg_toy --precision fp16 --backend trt"}
    check_engine(engine, {"tensorrt": "10.3.0", "compute_capability": "8.7"}, "rebuild")
    with pytest.raises(BundleError, match=r"TensorRT version 10.3.0 .* this machine has 11.1.0 .* edgeseg build "
                                          r"engines/lseg_toy --precision fp16 --backend trt"):
        check_engine(engine, {"tensorrt": "11.1.0", "compute_capability": "8.7", "gpu": "x"}, "rebuild")
    with pytest.raises(BundleError, match="GPU compute capability 8.7 .* this machine has 9.0"):
        check_engine(engine, {"tensorrt": "10.3.0", "compute_capability": "9.0", "gpu": "H100"}, "rebuild")


def test_trt_provider_needs_engines_in_the_manifest(lseg_bundle):
    with pytest.raises(BundleError, match="has no TensorRT engine .* --backend trt "):
        Bundle(lseg_bundle, provider="trt")


def test_missing_or_tampered_engine_file_is_refused(lseg_bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(lseg_bundle, folder)
    man = json.loads((folder / "manifest.json").read_text())
    man["backend"] = "tensorrt"  # the old name of native engines, as older builds wrote it: reads as trt
    for name, comp in man["components"].items():
        comp["engine"] = {"file": f"{name}.plan", "sha256": "0" * 64, "command": "edgeseg build X --backend tensorrt"}
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="missing or does not match its sha256; rebuild it: edgeseg build X"):
        Bundle(folder)  # the default provider follows the manifest's backend: native TensorRT
    man["backend"] = "coreml"
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="names backend 'coreml'"):
        Bundle(folder)


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT is absent")
def test_tensorrt_build_without_tensorrt_says_what_to_install(lseg_bundle, tmp_path):
    from edgeseg.export.build.builder import build_bundle

    with pytest.raises(ImportError, match="TensorRT is not installed .* pip install tensorrt cuda-python"):
        build_bundle(lseg_bundle, "fp16", "trt", out=tmp_path / "trt", progress=False)
    assert not (tmp_path / "trt").exists()


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engines_match_onnxruntime(lseg_bundle, tmp_path, precision):
    """On a TensorRT machine: build engines (strongly typed, profile from the manifest), run them natively and
    compare with ONNX Runtime CPU on the same graph; a second build must hit the engine cache."""
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.export.verify import compare

    cache = {"cache_dir": tmp_path / "engine-cache"}
    out = build_bundle(lseg_bundle, precision, "trt", out=tmp_path / "trt", trt_options=cache, progress=False)
    onnx_side = Bundle(out, provider="ort-cpu")
    trt_side = Bundle(out)
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    a = onnx_side.run("lseg_encoder", {"image": x})["pixel_embeds"]
    b = trt_side.run("lseg_encoder", {"image": x})["pixel_embeds"]
    assert compare(a, b)[1] > 0.99
    again = build_bundle(lseg_bundle, precision, "trt", out=tmp_path / "trt2", trt_options=cache, progress=False)
    assert all(c["engine"]["cache_hit"] for c in Bundle(again, provider="ort-cpu").components.values())


def test_ort_tensorrt_ep_options_carry_the_manifest_profile(lseg_bundle):
    from edgeseg.runtime.session import _ort_trt_options

    b = Bundle(lseg_bundle)
    comp = b.component("lseg_head")
    opts = _ort_trt_options(b.entry("lseg_head"))
    assert opts["trt_profile_max_shapes"] == ",".join(
        f"{t['name']}:{'x'.join(map(str, t['max']))}" for t in comp["inputs"])
    assert opts["trt_int8_enable"] == "False" and comp["sha256"][:16] in opts["trt_engine_cache_path"]
