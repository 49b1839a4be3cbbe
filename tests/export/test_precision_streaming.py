"""FP16 conversion of graphs with external data (the > 2 GB path: SD's UNet) without loading their weights:
the weightless graph through the converter, the weights converted tensor by tensor into one page-aligned data
file. Forced on the toy Ref-Diff UNet (an external-data copy, or ``stream_threshold=0``): the same graph and
outputs as the in-memory conversion, the policy's FP32 ops kept, one hashed data file per component."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export.build.external import ALIGN, external_info, save_model  # noqa: E402
from edgeseg.export.build.precision import FP16_POLICY, convert_fp16  # noqa: E402


def _feeds(manifest: dict, name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for t in manifest["components"][name]["inputs"]:
        shape = [d if isinstance(d, int) else t["opt"][i] for i, d in enumerate(t["shape"])]
        out[t["name"]] = rng.standard_normal(shape).astype(t["dtype"])
    return out


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_external_data_unet_converts_tensor_by_tensor_like_in_memory(refdiff_bundle, tmp_path, monkeypatch):
    manifest = json.loads((refdiff_bundle / "manifest.json").read_text())
    hints = tuple(manifest["components"]["unet_attn"]["precision_hints"]["fp32_outputs"])
    src = refdiff_bundle / "unet_attn.onnx"
    (tmp_path / "ext").mkdir()
    (tmp_path / "mem").mkdir()
    (tmp_path / "out").mkdir()
    ext = tmp_path / "ext" / "unet_attn.onnx"  # the layout of a > 2 GB export: every weight in unet_attn.onnx.data
    assert save_model(onnx.load(str(src)), ext, external=True) == ["unet_attn.onnx.data"]
    mem = tmp_path / "mem" / "unet_attn.onnx"
    convert_fp16(src, mem, fp32_outputs=hints)

    loads = []
    real_load = onnx.load

    def recording_load(path, *args, **kwargs):
        loads.append(kwargs.get("load_external_data", True))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", recording_load)
    dst = tmp_path / "out" / "unet_attn.onnx"
    rep = convert_fp16(ext, dst, fp32_outputs=hints)
    monkeypatch.undo()
    assert loads == [False], "the streaming conversion loaded the weights of the whole model"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["unet_attn.onnx", "unet_attn.onnx.data"]
    assert any("tensor by tensor" in n for n in rep.notes)

    graph = onnx.load(str(dst), load_external_data=False)
    external = [t for t in graph.graph.initializer if external_info(t)]
    assert external and all(int(external_info(t)["offset"]) % ALIGN == 0 for t in external)
    assert {external_info(t)["location"] for t in external} == {"unet_attn.onnx.data"}
    reference = onnx.load(str(mem))
    assert [n.op_type for n in graph.graph.node] == [n.op_type for n in reference.graph.node]
    assert ({t.name: t.data_type for t in graph.graph.initializer}
            == {t.name: t.data_type for t in reference.graph.initializer})
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    types.update({t.name: t.data_type for t in graph.graph.initializer})
    kept = [n for n in graph.graph.node if n.op_type in FP16_POLICY.keep_fp32_ops]
    assert kept and all(types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in kept)

    feeds = _feeds(manifest, "unet_attn")
    want, fp16, streamed = _run(src, feeds), _run(mem, feeds), _run(dst, feeds)
    for name in want:
        np.testing.assert_array_equal(streamed[name], fp16[name])
        a, b = want[name].ravel().astype(np.float64), streamed[name].ravel().astype(np.float64)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.999, name


def test_build_with_a_small_threshold_streams_every_component_and_hashes_one_data_file_each(refdiff_bundle, tmp_path):
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.runtime import Bundle
    from edgeseg.runtime.fileio import sha256_file

    out = build_bundle(refdiff_bundle, "fp16", out=tmp_path / "fp16", progress=False, stream_threshold=0,
                       lint_targets=())
    man = json.loads((out / "manifest.json").read_text())
    with_data = {n for n, c in man["components"].items() if c.get("external_data")}
    assert {"sd_text", "vae_encoder", "unet_attn", "sam_encoder", "clip_text", "clip_masked"} <= with_data
    for name, comp in man["components"].items():  # a graph without a tensor of INLINE_BYTES keeps one file
        data = sorted(p.name for p in out.glob(f"{name}.onnx.data"))
        assert [e["file"] for e in comp.get("external_data", [])] == data, name
        assert all(e["sha256"] == sha256_file(out / e["file"]) for e in comp.get("external_data", []))
    fp32, fp16 = Bundle(refdiff_bundle), Bundle(out)  # Bundle checks every hash, data files included
    feeds = _feeds(man, "unet_attn")
    a, b = fp32.run("unet_attn", feeds)["attn"].ravel(), fp16.run("unet_attn", feeds)["attn"].ravel()
    assert np.corrcoef(a, b)[0, 1] >= 0.999
