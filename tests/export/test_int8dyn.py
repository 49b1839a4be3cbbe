"""Dynamic INT8 for ONNX Runtime CPU (``--precision int8dyn``): what it quantizes, its fidelity, where it runs."""

import json

import onnx
import pytest

from edgeseg.export.build.builder import build_bundle
from edgeseg.export.fidelity import COSINE_BARS, task_agreement
from edgeseg.export.verify import verify_bundle


@pytest.fixture(scope="module")
def dyn(lseg_bundle, tmp_path_factory):
    return build_bundle(lseg_bundle, "int8dyn", out=tmp_path_factory.mktemp("b") / "lseg_toy_int8dyn", progress=False)


def test_weight_matmuls_are_dynamic_int8_and_attention_stays_fp32(dyn):
    m = onnx.load(str(dyn / "clip_text.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MatMulInteger") >= 6 and "DynamicQuantizeLinear" in ops
    consts = {i.name for i in m.graph.initializer}
    for n in m.graph.node:  # every MatMul left in FP32 multiplies two activations (attention)
        if n.op_type == "MatMul":
            assert not any(i in consts for i in n.input), n.name


def test_int8dyn_fidelity_and_manifest(dyn):
    for r in verify_bundle(dyn):
        assert r.cosine >= COSINE_BARS["int8dyn"], r
    comps = json.loads((dyn / "manifest.json").read_text())["components"]
    assert comps["clip_text"]["recipe"]["precision"] == "int8dyn" and comps["clip_text"]["converted"]["quantized_nodes"]
    t = task_agreement(dyn, 20, 0, progress=False)
    assert t.agreement >= t.bar == 0.95, t


def test_int8dyn_is_refused_for_tensorrt_backends(lseg_bundle, tmp_path):
    for backend in ("ort-trt", "trt", "ort-cuda"):
        with pytest.raises(ValueError, match="ort-cpu backend only"):
            build_bundle(lseg_bundle, "int8dyn", backend, tmp_path / backend, progress=False)
    assert not any(tmp_path.iterdir())
