"""TensorRT-compatibility lint: each rule fires on a tiny crafted ONNX model (onnx.helper, no torch)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from edgeseg.export.build.lint import TARGETS, LintIssue, format_issues, lint_bundle, lint_file, lint_model



def vi(name, elem=TP.FLOAT, shape=(2, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(nodes, inputs=None, outputs=None, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs if inputs is not None else [vi("x")],
                              outputs if outputs is not None else [vi("y")], list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def errors(issues):
    return [i for i in issues if i.level == "error"]


def rules(issues, level=None):
    return {i.rule for i in issues if level is None or i.level == level}


def only(issues, rule):
    found = [i for i in issues if i.rule == rule]
    assert found, f"rule {rule!r} did not fire: {issues}"
    return found


def clean_model(opset=17, dtype=np.float32):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Softmax", ["h"], ["s"], axis=-1, name="sm"),
         helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, name="ln")],
        [vi("x", elem)], [vi("y", elem)], [init("w", np.ones((4, 4), dtype)), init("gamma", np.ones(4, dtype)),
                                           init("beta", np.zeros(4, dtype))], opset=opset)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_clean_model_has_no_issues(dtype):
    assert lint_model(clean_model(dtype=dtype)) == []
    assert lint_model(clean_model(dtype=dtype), "trt11") == []


def test_targets_declare_opset_ranges():
    assert (TARGETS["trt10.3"]["opset_min"], TARGETS["trt10.3"]["opset_max"]) == (9, 20)
    assert (TARGETS["trt11"]["opset_min"], TARGETS["trt11"]["opset_max"]) == (9, 24)
    assert "Attention" in TARGETS["trt10.3"]["unsupported"] and "Attention" not in TARGETS["trt11"]["unsupported"]


@pytest.mark.parametrize("opset,target,bad", [(8, "trt10.3", True), (21, "trt10.3", True), (21, "trt11", False),
                                              (25, "trt11", True), (20, "trt10.3", False)])
def test_opset_range(opset, target, bad):
    issues = lint_model(clean_model(opset), target)
    assert ("opset-range" in rules(issues, "error")) is bad
    if bad:
        assert str(opset) in only(issues, "opset-range")[0].message


@pytest.mark.parametrize("domain,op", [("com.microsoft", "FusedMatMul"), ("com.microsoft", "QGemm"),
                                       ("ai.onnx.ml", "Normalizer")])
def test_custom_domain_ops_are_errors(domain, op):
    m = model([helper.make_node(op, ["x", "x"], ["y"], name="custom", domain=domain)],
              extra_opsets=[(domain, 1)])
    (issue,) = only(lint_model(m), "custom-domain")
    assert issue.level == "error" and issue.node == "custom" and "plugin" in issue.message and op in issue.message


@pytest.mark.parametrize("op", ["Unique", "Det", "BitwiseAnd", "MatMulInteger", "QLinearConv", "DFT",
                                "SequenceConstruct", "NegativeLogLikelihoodLoss"])
def test_unsupported_ops(op):
    (issue,) = only(lint_model(model([helper.make_node(op, ["x"], ["y"], name="n1")])), "unsupported-op")
    assert issue.level == "error" and issue.node == "n1" and op in issue.message


def test_unnamed_node_is_labelled_by_its_outputs():
    (issue,) = only(lint_model(model([helper.make_node("Det", ["x"], ["y"])])), "unsupported-op")
    assert issue.node == "Det(y)"


def test_opset23_attention_is_error_for_trt10_3_not_trt11():
    q = [vi(n, shape=(1, 2, 8, 16)) for n in "qkv"]
    m = model([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")], q,
              [vi("y", shape=(1, 2, 8, 16))], opset=23)
    old = lint_model(m, "trt10.3")
    assert {"opset-range", "unsupported-op"} <= rules(old, "error")
    assert only(old, "unsupported-op")[0].node == "attn"
    assert errors(lint_model(m, "trt11")) == []


def test_dtypes():
    nodes = [helper.make_node("Add", ["x", "d"], ["a"], name="add"),
             helper.make_node("Cast", ["u8in"], ["uf"], to=TP.FLOAT, name="cast_in"),
             helper.make_node("Cast", ["a"], ["u8mid"], to=TP.UINT8, name="to_u8"),
             helper.make_node("Cast", ["u8mid"], ["y"], to=TP.FLOAT, name="from_u8"),
             helper.make_node("Identity", ["s"], ["s2"], name="idn")]
    m = model(nodes, [vi("x"), vi("u8in", TP.UINT8)], [vi("y"), vi("uf")],
              inits=[init("d", np.ones((2, 4), np.float64)), helper.make_tensor("s", TP.STRING, [1], [b"a"])])
    issues = lint_model(m)
    assert [(i.level, i.node) for i in only(issues, "float64")] == [("warning", "d")]
    assert [(i.level, i.node) for i in only(issues, "unsupported-dtype") if i.node == "s"] == [("error", "s")]
    assert [(i.level, i.node) for i in only(issues, "uint8")] == [("error", "u8mid")]  # graph-I/O uint8 is fine


def test_int64_out_of_int32_range_is_warning():
    m = model([helper.make_node("Tile", ["x", "reps"], ["y"], name="tile")],
              inits=[init("reps", np.array([1, 2 ** 40], np.int64))])
    (issue,) = only(lint_model(m), "int64-range")
    assert issue.level == "warning" and issue.node == "reps"


def test_int64_slice_end_past_the_end_is_not_flagged():
    """torch exports "to the end" as INT64_MAX Slice ends; TensorRT's parser clamps Slice bounds."""
    m = model([helper.make_node("Slice", ["x", "st", "en"], ["y"], name="sl")],
              inits=[init("st", np.array([0], np.int64)), init("en", np.array([2 ** 63 - 1], np.int64))])
    assert [i for i in lint_model(m) if i.rule == "int64-range"] == []


def qdq_model(zp=np.int8(0), scale=0.1, w_axis=0, q_zp=True, w_dtype=np.int8):
    """x -> Q -> DQ -> Conv(DQ(per-channel int8 W)) -> y."""
    zp_arr = np.asarray(zp)
    inits = [init("xs", np.float32(scale)), init("W", np.ones((4, 3, 1, 1), w_dtype)),
             init("ws", np.full(4, 0.05, np.float32)), init("wzp", np.zeros(4, w_dtype))]
    if q_zp:
        inits.append(init("xzp", zp_arr))
    zp_in = ["xzp"] if q_zp else []
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", *zp_in], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", *zp_in], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["W", "ws", "wzp"], ["Wd"], axis=w_axis, name="dq_w"),
             helper.make_node("Conv", ["xd", "Wd"], ["y"], name="conv")]
    return model(nodes, [vi("x", shape=(1, 3, 8, 8))], [vi("y", shape=(1, 4, 8, 8))], inits, opset=13)


def test_symmetric_int8_qdq_passes():
    assert lint_model(qdq_model()) == []


@pytest.mark.parametrize("kwargs,rule,node,text", [
    (dict(zp=np.uint8(0)), "qdq-type", "q", "asymmetric uint8"),
    (dict(zp=np.int8(3)), "qdq-zero-point", "q", "xzp"),
    (dict(q_zp=False), "qdq-type", "q", "asymmetric uint8"),  # default zero point type is uint8
    (dict(scale=-0.5), "qdq-scale", "q", "positive"),
    (dict(w_dtype=np.uint8), "qdq-type", "dq_w", "uint8"),
])
def test_bad_qdq(kwargs, rule, node, text):
    found = only(lint_model(qdq_model(**kwargs)), rule)
    assert found[0].level == "error" and found[0].node == node and text in found[0].message


def test_per_channel_axis_must_be_output_channel():
    (issue,) = only(lint_model(qdq_model(w_axis=1)), "qdq-axis")
    assert issue.level == "warning" and issue.node == "dq_w"
    for axis, warn in ((1, False), (-1, False), (0, True)):
        m = model([helper.make_node("DequantizeLinear", ["W", "ws"], ["Wd"], axis=axis, name="dq_w"),
                   helper.make_node("MatMul", ["x", "Wd"], ["y"], name="mm")],
                  inits=[init("W", np.ones((4, 4), np.int8)), init("ws", np.full(4, 0.1, np.float32))], opset=13)
        assert ("qdq-axis" in rules(lint_model(m))) is warn


def test_non_constant_scale_dangling_q_and_dq_of_activation():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("Relu", ["xq"], ["r"], name="relu"),
             helper.make_node("DequantizeLinear", ["x8", "c", "zp"], ["y"], name="dq_act")]
    m = model(nodes, [vi("x"), vi("s", shape=()), vi("x8", TP.INT8)], [vi("y"), vi("r", TP.INT8)],
              inits=[init("zp", np.int8(0)), init("c", np.float32(0.1))], opset=13)
    issues = lint_model(m)
    assert only(issues, "qdq-scale")[0].node == "q" and "'s'" in only(issues, "qdq-scale")[0].message
    assert [(i.level, i.node) for i in only(issues, "qdq-dangling")] == [("error", "q")]
    assert [(i.level, i.node) for i in only(issues, "qdq-input")] == [("warning", "dq_act")]


def test_int32_bias_dequantize_is_error():
    m = model([helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], name="dq_bias"),
               helper.make_node("Add", ["x", "bd"], ["y"], name="add")],
              inits=[init("b", np.ones(4, np.int32)), init("bs", np.float32(0.01))], opset=13)
    (issue,) = only(lint_model(m), "qdq-type")
    assert issue.node == "dq_bias" and "QuantizeBias=False" in issue.message


@pytest.mark.parametrize("via_cast", [False, True])
def test_graph_input_as_reshape_shape(via_cast):
    nodes = [helper.make_node("Cast", ["shape"], ["shape64"], to=TP.INT64, name="c")] if via_cast else []
    nodes.append(helper.make_node("Reshape", ["x", "shape64" if via_cast else "shape"], ["y"], name="rs"))
    m = model(nodes, [vi("x"), vi("shape", TP.INT32 if via_cast else TP.INT64, (2,))], [vi("y", shape=(4, 2))])
    (issue,) = only(lint_model(m), "shape-tensor-input")
    assert issue.level == "error" and issue.node == "rs" and "graph input shape" in issue.message


def test_non_constant_axes():
    m = model([helper.make_node("Unsqueeze", ["x", "ax"], ["y"], name="unsq")],
              [vi("x"), vi("ax", TP.INT64, (1,))], [vi("y", shape=(2, 1, 4))], opset=13)
    (issue,) = only(lint_model(m), "non-constant-axes")
    assert issue.node == "unsq" and "'ax'" in issue.message
    ok = model([helper.make_node("Constant", [], ["ax"], value=init("v", np.array([1], np.int64))),
                helper.make_node("Unsqueeze", ["x", "ax"], ["y"], name="unsq")], outputs=[vi("y", shape=(2, 1, 4))],
               opset=13)
    assert lint_model(ok) == []


def test_bad_dims_and_data_dependent_ops():
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Identity", ["i"], ["s"])],
                             "body", [vi("i", TP.INT64, ()), vi("c", TP.BOOL, ())],
                             [vi("c_out", TP.BOOL, ()), vi("s", TP.INT64, ())])
    m = model([helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
               helper.make_node("Loop", ["n", ""], ["scan"], body=body, name="loop"),
               helper.make_node("Identity", ["x"], ["y"])],
              [vi("x", shape=(0, 4)), vi("n", TP.INT64, ())],
              [vi("y", shape=(0, 4)), vi("nz", TP.INT64, None), vi("scan", TP.INT64, None)])
    issues = lint_model(m)
    assert [(i.level, i.node) for i in only(issues, "bad-dim")] == [("error", "x")]
    assert [(i.level, i.node) for i in only(issues, "data-dependent-shape")] == [("warning", "nz"),
                                                                                   ("warning", "loop")]
    m.graph.initializer.append(init("n", np.int64(3)))  # constant trip count: static scan length
    m.graph.input.remove(m.graph.input[1])
    assert [i.node for i in only(lint_model(m), "data-dependent-shape")] == ["nz"]


@pytest.mark.parametrize("attrs,ok", [({"mode": "linear"}, True), ({"mode": "cubic"}, False),
                                      ({"coordinate_transformation_mode": "tf_crop_and_resize"}, False),
                                      ({"coordinate_transformation_mode": "align_corners"}, True),
                                      ({"antialias": 1}, False)])
def test_resize(attrs, ok):
    m = model([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="rsz", **attrs)],
              [vi("x", shape=(1, 1, 4, 4))], [vi("y", shape=(1, 1, 8, 8))],
              inits=[init("sc", np.array([1, 1, 2, 2], np.float32))], opset=18)
    issues = lint_model(m)
    assert ("resize" not in rules(issues)) is ok
    if not ok:
        assert only(issues, "resize")[0].node == "rsz" and only(issues, "resize")[0].level == "error"


def test_einsum():
    ell = model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="...ij,...kj->...ik", name="es")],
                outputs=[vi("y", shape=(2, 2))], opset=12)
    assert [(i.level, i.node) for i in only(lint_model(ell), "einsum")] == [("error", "es")]
    three = model([helper.make_node("Einsum", ["x", "x", "x"], ["y"], equation="ij,ij,ij->ij", name="e3")], opset=12)
    assert [(i.level, i.node) for i in only(lint_model(three), "einsum")] == [("warning", "e3")]


def dyn_model():
    return model([helper.make_node("Identity", ["image"], ["feat"], name="id")],
                 [vi("image", shape=("batch", 3, "h", 8))], [vi("feat", shape=("batch", 3, "h", 8))])


def spec(name="image", **prof):
    return {"inputs": [{"name": name, "dtype": "float32", "shape": ["batch", 3, "h", 8], **prof}],
            "outputs": [{"name": "feat", "dtype": "float32", "shape": ["batch", 3, "h", 8]}]}


GOOD_PROFILE = dict(min=[1, 3, 4, 8], opt=[2, 3, 8, 8], max=[4, 3, 16, 8])


def test_spec_matching_profile_passes():
    assert lint_model(dyn_model(), spec=spec(**GOOD_PROFILE)) == []
    assert lint_model(dyn_model()) == []  # no spec: dynamic axes are not judged


def test_spec_wrong_input_name():
    issues = lint_model(dyn_model(), spec=spec("pixels", **GOOD_PROFILE))
    assert {i.node for i in only(issues, "spec-mismatch")} == {"pixels", "image"}
    assert all(i.level == "error" for i in only(issues, "spec-mismatch"))


def test_spec_dynamic_axis_without_profile():
    issues = lint_model(dyn_model(), spec=spec())
    assert [(i.level, i.node) for i in only(issues, "spec-profile")] == [("error", "image")]
    dyn = only(issues, "dynamic-shape")
    assert ("error", "image") in {(i.level, i.node) for i in dyn} and any("axis 2" in i.message for i in dyn)


def test_spec_profile_order_and_dtype():
    bad = dict(min=[1, 3, 8, 8], opt=[2, 3, 4, 8], max=[4, 3, 16, 8])  # min > opt on axis 2
    assert only(lint_model(dyn_model(), spec=spec(**bad)), "spec-profile")
    s = spec(**GOOD_PROFILE)
    s["outputs"][0]["dtype"] = "float16"
    (issue,) = only(lint_model(dyn_model(), spec=s), "spec-mismatch")
    assert issue.node == "feat" and "float16" in issue.message


def test_unknown_target_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="trt10.3.*trt11"):
        lint_model(clean_model(), "trt9")
    with pytest.raises(ValueError, match="known targets"):
        lint_file(tmp_path / "nope.onnx", "trt9")
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        lint_file(tmp_path / "nope.onnx")


def test_lint_file_path_and_format(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(qdq_model(zp=np.uint8(0)), path)
    issues = lint_model(str(path))
    assert issues == lint_file(path) and errors(issues)
    text = format_issues(issues + [LintIssue("warning", "x", "", "model-level")], path)
    assert "[qdq-type] q:" in text and f"{path}: warning: [x] <model>: model-level" in text
    assert text.splitlines()[-1] == f"{path}: {len(issues)} errors, 1 warnings"


def test_lint_bundle(tmp_path):
    onnx.save(dyn_model(), tmp_path / "enc.onnx")
    onnx.save(clean_model(), tmp_path / "head.onnx")
    s = spec(**GOOD_PROFILE)
    manifest = {"components": {"enc": {"file": "enc.onnx", **s, "opset": 17},
                               "head": {"file": "head.onnx", "inputs": [{"name": "x", "dtype": "float32",
                                                                         "shape": [2, 4]}], "outputs": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = lint_bundle(tmp_path)
    assert result["enc"] == []
    assert [(i.rule, i.node) for i in result["head"]] == [("spec-mismatch", "y")]
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        lint_bundle(tmp_path / "missing")


@pytest.mark.parametrize("quantize_bias", [False, True])
def test_ort_quantize_static_qdq_int8_model(tmp_path, quantize_bias):
    """ORT's symmetric per-channel QDQ INT8 passes; its default int32 bias DQs are flagged (TensorRT's
    DequantizeLinear takes INT8/FP8/INT4 only), so the INT8 export must pass QuantizeBias=False."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "mw"], ["m"], name="mm"),
             helper.make_node("Gemm", ["m", "gw", "gb"], ["y"], transB=1, name="gemm")]
    fp32 = model(nodes, [vi("x", shape=(1, 3, 4, 4))], [vi("y", shape=(1, 5))],
                 [init("cw", f32(8, 3, 3, 3)), init("cb", f32(8)), init("mw", f32(128, 16)),
                  init("gw", f32(5, 16)), init("gb", f32(5))], opset=17)
    fp32.ir_version = 8
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(fp32, src)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": f32(1, 3, 4, 4)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Conv", "Gemm"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": quantize_bias})
    q = onnx.load(str(dst))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    issues = lint_model(q)
    if quantize_bias:
        assert {(i.rule, i.node) for i in errors(issues)} == {("qdq-type", "cb_DequantizeLinear"),
                                                               ("qdq-type", "gb_DequantizeLinear")}
    else:
        assert errors(issues) == [], format_issues(issues, dst)


def test_non_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        lint_file(bad)
