"""FP16 / INT8 builds: the written policies hold in the graphs, every component keeps parity with FP32 PyTorch
(parametrized over the registry), the bundles pass the TensorRT lint and the task-level fidelity bars under
ONNX Runtime CPU, and bad build requests fail cleanly."""

import json

import numpy as np
import onnx
import pytest

from edgeseg.export.build.builder import build_bundle, default_out
from edgeseg.export.bundle import COMPONENTS
from conftest import PARITY_BUNDLE, PRECISION_METHODS
from edgeseg.export.fidelity import AGREEMENT_BARS, COSINE_BARS, ensure_built, polygraphy_compare, task_agreement
from edgeseg.export.build.lint import TARGETS, lint_bundle
from edgeseg.export.build.precision import FP16_POLICY
from edgeseg.export.verify import verify_bundle
from edgeseg.runtime import Bundle, BundleError, LSegPredictor
from edgeseg.train.data.toyworld import ToyWorld


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("component", sorted(c for c in COMPONENTS if PARITY_BUNDLE[c] in PRECISION_METHODS))
def test_component_parity_with_fp32_pytorch(built, component, precision):
    method = PARITY_BUNDLE[component]
    rows = [r for r in verify_bundle(built(method, precision)) if r.component == component]
    assert {r.shape[0] for r in rows} == {1, 3}
    for r in rows:
        assert r.cosine >= COSINE_BARS[precision], r


def test_fp16_policy_ops_stay_fp32_and_io_unchanged(built, lseg_bundle):
    out = built("lseg", "fp16")
    for name in ("lseg_encoder", "clip_text"):
        m = onnx.load(str(out / f"{name}.onnx"))
        types = _types(m)
        kept = [n for n in m.graph.node if n.op_type in FP16_POLICY.keep_fp32_ops]
        assert kept, f"{name} has none of the policy's ops"
        for n in kept:
            assert types[n.input[0]] == onnx.TensorProto.FLOAT, f"{n.op_type} {n.name} runs in FP16"
        matmul_w = [types[i] for n in m.graph.node if n.op_type in ("MatMul", "Conv") for i in n.input[1:2]]
        assert onnx.TensorProto.FLOAT16 in matmul_w, "no MatMul/Conv was converted to FP16"
    src, dst = Bundle(lseg_bundle).manifest, Bundle(out).manifest
    for name, comp in dst["components"].items():
        assert comp["inputs"] == src["components"][name]["inputs"]
        assert comp["outputs"] == src["components"][name]["outputs"]
        assert comp["precision"] == "fp16" and comp["recipe"]["keep_fp32_ops"]


def test_int8_is_symmetric_qdq_on_weight_ops_only(built):
    m = onnx.load(str(built("clip", "int8") / "clip_image.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(q) > 20
    for n in q:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp} is not symmetric int8"
    producers = {o: n for n in m.graph.node for o in n.output}

    def dq(name):  # the DequantizeLinear producing ``name``, if any
        p = producers.get(name)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    def is_weight(name):
        return name in inits or (dq(name) is not None and dq(name).input[0] in inits)

    quantized_weight_matmuls = 0
    for n in m.graph.node:
        if n.op_type != "MatMul":
            continue
        if any(is_weight(i) for i in n.input):
            quantized_weight_matmuls += all(dq(i) is not None for i in n.input)
        else:
            assert not any(dq(i) for i in n.input), f"attention MatMul {n.name} (two activations) was quantized"
    assert quantized_weight_matmuls >= 10
    assert [n for n in m.graph.node if n.op_type == "Conv" and dq(n.input[1]) is not None]


def test_int8_manifest_records_calibration_and_exclusions(built):
    man = Bundle(built("lseg", "int8")).manifest
    assert man["precision"] == "int8" and man["build"]["calibration"]["images"]["toyworld"] == "train"
    enc = man["components"]["lseg_encoder"]
    assert enc["converted"]["quantized_nodes"] > 0 and enc["converted"]["calibration_samples"] == 64
    assert any("attn" in n for n in enc["converted"]["excluded_nodes"])
    assert man["components"]["lseg_head"]["converted"]["note"].startswith("no quantizable op")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_builds_pass_the_tensorrt_lint(built, lseg_bundle, clip_bundle, precision):
    for method, src in (("lseg", lseg_bundle), ("clip", clip_bundle)):
        folder = src if precision == "fp32" else built(method, precision)
        for target in TARGETS:
            for name, issues in lint_bundle(folder, target).items():
                errors = [i for i in issues if i.level == "error"]
                assert not errors, f"{method}/{precision}/{name} [{target}]: {errors}"


@pytest.mark.parametrize("method,precision", [("lseg", "fp16"), ("lseg", "int8"), ("clip", "fp16"), ("clip", "int8"),
                                              ("tcl", "int8"), ("ifseg", "int8")])
def test_task_agreement_bars(built, method, precision):
    res = task_agreement(built(method, precision), n=200 if method == "clip" else 60, seed=1, progress=False)
    assert res.agreement >= AGREEMENT_BARS[precision], res.summary()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_polygraphy_comparison_passes(built, lseg_bundle, precision):
    rows = polygraphy_compare(lseg_bundle, built("lseg", precision), iterations=2)
    assert {r.component for r in rows} == {"clip_text", "lseg_encoder", "lseg_head"}
    assert all(r.passed for r in rows), rows
    enc = next(r for r in rows if r.component == "lseg_encoder")
    assert enc.max_abs > 0, "the reduced-precision graph computes exactly like FP32: conversion did nothing"


def test_built_bundle_runs_in_the_runtime(built, text_cache):
    pred = LSegPredictor(built("lseg", "int8"), cache_dir=text_cache)
    scene = ToyWorld("seen", 4)[0]
    res = pred.segment(scene.image, ["circle", "square", "grass", "sand", "water", "sky", "road", "snow"])
    assert res.label_map.shape == scene.image.shape[:2] and res.provider == "CPUExecutionProvider"


def test_ensure_built_reuses_a_current_build_and_rebuilds_a_stale_one(built, lseg_bundle):
    out = built("lseg", "fp16")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_built(lseg_bundle, "fp16", progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # reused: the recipe compares as JSON holds it
    man = json.loads((out / "manifest.json").read_text())
    man["build"]["source_manifest_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(man))
    assert ensure_built(lseg_bundle, "fp16", progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert Bundle(out).manifest["build"]["source_manifest_sha256"] != "0" * 64


def test_build_refuses_bad_requests(built, lseg_bundle, tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        build_bundle(lseg_bundle, "int4", progress=False)
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        build_bundle(lseg_bundle, "fp16", "openvino", progress=False)
    with pytest.raises(ValueError, match="already a fp16 build"):
        build_bundle(built("lseg", "fp16"), "int8", progress=False)
    with pytest.raises(ValueError, match="is the source bundle"):
        build_bundle(lseg_bundle, "fp16", out=lseg_bundle, progress=False)
    with pytest.raises(FileNotFoundError, match="calibration image folder"):
        build_bundle(lseg_bundle, "int8", out=tmp_path / "x", calib_images=tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no .png"):
        build_bundle(lseg_bundle, "int8", out=tmp_path / "x", calib_images=tmp_path / "empty", progress=False)
    assert not (tmp_path / "x").exists()


def test_build_of_a_corrupt_source_fails_and_writes_nothing(lseg_bundle, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(lseg_bundle, src)
    with open(src / "lseg_encoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="does not match the sha256"):
        build_bundle(src, "fp16", progress=False)
    assert not default_out(src, "fp16", "ort-cpu").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"], "a temporary build folder was left behind"


def test_failed_build_leaves_no_half_written_bundle(lseg_bundle, tmp_path, monkeypatch):
    import edgeseg.export.build.builder as build

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "quantize_int8", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_bundle(lseg_bundle, "int8", out=tmp_path / "int8", calib_n=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_runs_without_torch(lseg_bundle, tmp_path):
    """`edgeseg build` must run on a Jetson that has the runtime, onnx and TensorRT but no torch."""
    import subprocess
    import sys

    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'open_clip'):
            raise ImportError('torch is not installed on this device: ' + name)
sys.meta_path.insert(0, NoTorch())
from edgeseg.export.build.builder import build_bundle
from edgeseg.runtime import Bundle
for p in ('fp16', 'int8'):
    out = build_bundle({str(lseg_bundle)!r}, p, out={str(tmp_path)!r} + '/' + p, calib_n=4, progress=False)
    assert Bundle(out).manifest['precision'] == p
print('built without torch')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "built without torch" in res.stdout, res.stderr[-2000:]


def test_backend_picks_the_provider_without_silent_fallback(lseg_bundle, tmp_path):
    import onnxruntime

    out = build_bundle(lseg_bundle, "fp16", "ort-cuda", out=tmp_path / "cuda", progress=False)
    b = Bundle(out)
    assert b.provider == "ort-cuda" and Bundle(out).manifest["backend"] == "ort-cuda"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="provider 'ort-cuda' .* is not available .* provider='ort-cpu'"):
            b.session("lseg_head")
    cpu = Bundle(out, provider="ort-cpu")
    x = np.zeros((1, 128, 48, 48), np.float32)
    x[:, 0] = 1
    t = np.eye(2, 128, dtype=np.float32)
    assert cpu.run("lseg_head", {"pixel_embeds": x, "text_embeds": t})["logits"].shape == (1, 2, 96, 96)
