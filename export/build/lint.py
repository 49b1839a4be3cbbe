"""TensorRT-compatibility lint for ONNX files (FP32, FP16 and INT8 Q/DQ graphs), run in CI on every export.

TensorRT cannot be installed everywhere, so this encodes the documented rules of the ONNX-TensorRT parser
statically: opset range, unsupported and custom-domain ops, data types, explicit-quantization (Q/DQ) rules,
shape tensors fed by graph inputs, dynamic shapes versus the manifest's optimization profiles, Resize and
Einsum restrictions. ``error`` means TensorRT would refuse to parse/build; ``warning`` builds but is slow,
lossy or risky. CLI: ``edgeseg lint FILE.onnx|BUNDLE_DIR [--target trt10.3|trt11]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseg.runtime.integrity import inside


@dataclass(frozen=True)
class LintIssue:
    """One finding: ``level`` is "error" or "warning"; ``node`` is a node/tensor name ("" = model-level)."""

    level: str
    rule: str
    node: str
    message: str


# Ops marked "N" (no importer) in onnx-tensorrt docs/operators.md, TensorRT 10.x support matrix.
_UNSUPPORTED_TRT10 = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
    MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement
    QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat
    StringNormalizer StringSplit TfIdfVectorizer Unique""".split())
# Opset-23+ ops that the TensorRT 10.3 parser (JetPack 6 / Orin) predates; later 10.x/11 parsers import them.
_NEWER_THAN_TRT10_3 = frozenset({"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter"})

TARGETS: dict[str, dict] = {
    "trt10.3": {"opset_min": 9, "opset_max": 20, "unsupported": _UNSUPPORTED_TRT10 | _NEWER_THAN_TRT10_3,
                "description": "TensorRT 10.3 (JetPack 6, Jetson Orin)"},
    "trt11": {"opset_min": 9, "opset_max": 24, "unsupported": _UNSUPPORTED_TRT10,
              "description": "TensorRT 11 (explicit Q/DQ quantization only)"},
}

_DEFAULT_DOMAINS = ("", "ai.onnx")
_INT32 = np.iinfo(np.int32)
# (op, input indices) whose operand TensorRT treats as a shape tensor.
_SHAPE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Resize": (1, 2, 3), "Slice": (1, 2, 3, 4),
                   "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "OneHot": (1,), "Pad": (1, 3)}
_AXES_OPS = {"Squeeze", "Unsqueeze", "CumSum", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
             "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"}
_RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_BAD_DTYPES = {TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.COMPLEX128}


def _dtype_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem).lower()


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and, recursively, its If/Loop/Scan subgraphs."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs."""
    for g in _graphs(graph):
        yield from g.node


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({','.join(node.output)})"


class _Linter:
    def __init__(self, model: onnx.ModelProto, target: dict, spec: dict | None) -> None:
        self.model, self.target, self.spec, self.issues = model, target, spec, []
        self.graph = g = model.graph
        self.inits = {t.name: t for sub in _graphs(g) for t in sub.initializer}
        self.producer = {o: n for n in _walk(g) for o in n.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in _walk(g):
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))
        self.real_inputs = [v for v in g.input if v.name not in self.inits]
        self.io_names = {v.name for v in g.input} | {v.name for v in g.output}
        try:  # inferred value_info types; best effort (custom ops, >2 GB models)
            inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
        except Exception:
            inferred = []
        self.values = {v.name: v for v in list(g.value_info) + list(inferred) + list(g.input) + list(g.output)}

    def add(self, level: str, rule: str, node: str, message: str) -> None:
        self.issues.append(LintIssue(level, rule, node, message))

    def const(self, name: str) -> TensorProto | None:
        """The constant behind ``name`` (initializer or Constant node, through Identity), else None."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity" and name not in self.inits:
            name, node = node.input[0], self.producer.get(node.input[0])
        if name in self.inits:
            return self.inits[name]
        if node is None or node.op_type != "Constant":
            return None
        for a in node.attribute:
            if a.name == "value":
                return a.t
            if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                val = helper.get_attribute_value(a)
                kind = TensorProto.FLOAT if "float" in a.name else TensorProto.INT64
                return helper.make_tensor(name, kind, [len(val)] if isinstance(val, list) else [], np.ravel(val))
        return None

    def elem_type(self, name: str) -> int | None:
        if name in self.inits:
            return self.inits[name].data_type
        v = self.values.get(name)
        return v.type.tensor_type.elem_type if v is not None and v.type.HasField("tensor_type") else None

    def rank(self, name: str) -> int | None:
        if (c := self.const(name)) is not None:
            return len(c.dims)
        v = self.values.get(name)
        if v is not None and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
        return None

    # -- rules ------------------------------------------------------------------------------------------------
    def check_opset(self) -> None:
        lo, hi = self.target["opset_min"], self.target["opset_max"]
        versions = [o.version for o in self.model.opset_import if o.domain in _DEFAULT_DOMAINS]
        if not versions:
            self.add("error", "opset-range", "", "model declares no default-domain (ai.onnx) opset_import")
        elif not lo <= versions[0] <= hi:
            self.add("error", "opset-range", "", f"model opset {versions[0]} is outside the target's supported "
                     f"range {lo}..{hi}; re-export with an opset in range (e.g. opset_version=17)")
        if self.spec and self.spec.get("opset") and versions and versions[0] != self.spec["opset"]:
            self.add("warning", "spec-mismatch", "", f"model opset {versions[0]} differs from the manifest's "
                     f"{self.spec['opset']}; re-export or update the manifest")

    def check_ops(self) -> None:
        for node in _walk(self.graph):
            label, op = _label(node), node.op_type
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.domain not in _DEFAULT_DOMAINS:
                self.add("error", "custom-domain", label, f"{node.domain}::{op} is a custom domain op; TensorRT "
                         "needs a plugin. Export with standard ONNX ops only (no ORT contrib fusions/QOperator).")
            elif op in self.target["unsupported"]:
                self.add("error", "unsupported-op", label, f"{op} has no TensorRT importer for this target "
                         "(onnx-tensorrt docs/operators.md); rewrite it with supported ops or add a plugin")
            elif op == "Resize":
                mode = attrs.get("mode", b"nearest").decode()
                ctm = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
                if mode not in ("nearest", "linear"):
                    self.add("error", "resize", label, f"Resize mode '{mode}' is unsupported; use nearest or "
                             "linear (e.g. interpolate(mode='bilinear'))")
                if ctm not in _RESIZE_CTM:
                    self.add("error", "resize", label, f"Resize coordinate_transformation_mode '{ctm}' is "
                             f"unsupported; use one of {sorted(_RESIZE_CTM)}")
                if attrs.get("antialias", 0):
                    self.add("error", "resize", label, "Resize antialias=1 is unsupported; set antialias=False")
            elif op == "Einsum":
                if "..." in attrs.get("equation", b"").decode():
                    self.add("error", "einsum", label, "Einsum equation with '...' (ellipsis) is unsupported; "
                             "spell out every axis or use MatMul/Transpose")
                if len(node.input) > 2:
                    self.add("warning", "einsum", label, f"Einsum with {len(node.input)} inputs; split it into "
                             "two-operand Einsums/MatMuls for reliable TensorRT kernels")
            elif op in ("NonZero", "NonMaxSuppression") or (op == "Loop" and self._dynamic_scan(node, attrs)):
                self.add("warning", "data-dependent-shape", label, f"{op}: data-dependent shapes: output size "
                         "known only at run time (slow, no fusion); avoid or bound it if possible")
            if op == "Constant" and any(k in attrs for k in ("sparse_value", "value_string", "value_strings")):
                self.add("error", "unsupported-dtype", label, "Constant with sparse/string value is unsupported")

    def _dynamic_scan(self, node: onnx.NodeProto, attrs: dict) -> bool:
        """Loop with scan outputs whose length (trip count M) is not a build-time constant."""
        body = attrs.get("body")
        scans = body is not None and len(body.output) - 1 - (len(node.input) - 2) > 0
        return scans and (not node.input or not node.input[0] or self.const(node.input[0]) is None)

    def check_dtypes(self) -> None:
        qdq_tensors = {t for n in _walk(self.graph) if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                       for t in list(n.input) + list(n.output)}
        tensors = [(t.name, t.data_type, True) for t in self.inits.values()]
        tensors += [(n.output[0], a.t.data_type, True) for n in _walk(self.graph) if n.op_type == "Constant"
                    for a in n.attribute if a.name == "value"]
        tensors += [(name, v.type.tensor_type.elem_type, False) for name, v in self.values.items()]
        seen: set[str] = set()
        for name, elem, is_const in tensors:
            if name in seen:
                continue
            seen.add(name)
            if elem == TensorProto.DOUBLE:
                self.add("warning", "float64", name, f"tensor '{name}' is float64; TensorRT casts DOUBLE down to "
                         "FLOAT (clamping to +-FLT_MAX); export it as float32")
            elif elem in _BAD_DTYPES:
                self.add("error", "unsupported-dtype", name, f"tensor '{name}' has type {_dtype_name(elem)}, "
                         "which TensorRT cannot represent; remove it from the graph")
            elif elem == TensorProto.UINT8 and name not in self.io_names and name not in qdq_tensors:
                self.add("error", "uint8", name, f"tensor '{name}' is uint8 inside the graph; TensorRT supports "
                         "UINT8 only as network input/output: Cast it to float/int32 right at the boundary")
            c = self.const(name) if is_const and elem == TensorProto.INT64 else None
            if c is not None:
                arr = numpy_helper.to_array(c)
                uses = self.consumers.get(name, [])
                # Slice starts/ends past the end (INT64_MAX, torch's "to the end") are clamped by the parser.
                slice_bound = uses and all(n.op_type == "Slice" and i in (1, 2) for n, i in uses)
                if arr.size and (arr.max() > _INT32.max or arr.min() < _INT32.min) and not slice_bound:
                    users = sorted({n.op_type for n, _ in uses})
                    self.add("warning", "int64-range", name, f"int64 constant '{name}' (used by {', '.join(users)})"
                             " holds values outside the int32 range; some TensorRT layers cast to int32: clamp it "
                             "(e.g. Slice ends to 2**31-1)")

    def check_qdq(self) -> None:
        for node in self.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            label, is_q = _label(node), node.op_type == "QuantizeLinear"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            scale = self.const(node.input[1])
            if scale is None:
                self.add("error", "qdq-scale", label, f"{node.op_type} scale '{node.input[1]}' must be a constant "
                         "(initializer or Constant); fold it at export time")
            elif not np.all(numpy_helper.to_array(scale).astype(np.float64) > 0):
                self.add("error", "qdq-scale", label, f"{node.op_type} scale '{node.input[1]}' must be positive")
            qtype = None
            if len(node.input) > 2 and node.input[2]:
                zp = self.const(node.input[2])
                if zp is None:
                    self.add("error", "qdq-zero-point", label, f"zero point '{node.input[2]}' must be a constant")
                else:
                    qtype = zp.data_type
                    if np.any(numpy_helper.to_array(zp).astype(np.float64) != 0):
                        self.add("error", "qdq-zero-point", label, f"zero point '{node.input[2]}' is nonzero; "
                                 "TensorRT needs symmetric quantization (zero point 0): ActivationSymmetric/"
                                 "WeightSymmetric=True")
            if qtype is None:
                qtype = (attrs.get("output_dtype") or TensorProto.UINT8) if is_q else self.elem_type(node.input[0])
            if qtype == TensorProto.UINT8:
                self.add("error", "qdq-type", label, f"{node.op_type}: asymmetric uint8 not supported; use "
                         "symmetric int8 (ActivationSymmetric/WeightSymmetric, QInt8 activations and weights)")
            elif qtype == TensorProto.INT32:
                self.add("error", "qdq-type", label, f"{node.op_type}: int32 (quantized bias) is unsupported; "
                         "keep biases float (extra_options QuantizeBias=False)")
            elif qtype is not None and qtype != TensorProto.INT8:
                self.add("error", "qdq-type", label, f"{node.op_type}: quantized type {_dtype_name(qtype)} is "
                         "not INT8; this pipeline builds INT8 explicit-quantization engines")
            if is_q:
                uses = self.consumers.get(node.output[0], [])
                if not uses or node.output[0] in self.io_names or any(
                        n.op_type != "DequantizeLinear" for n, _ in uses):
                    self.add("error", "qdq-dangling", label, f"QuantizeLinear output '{node.output[0]}' must feed "
                             "only DequantizeLinear nodes (Q/DQ pairs); remove or pair the dangling Q")
                continue
            src = self.producer.get(node.input[0])
            if not (src is not None and src.op_type == "QuantizeLinear") and self.const(node.input[0]) is None:
                self.add("warning", "qdq-input", label, f"DequantizeLinear input '{node.input[0]}' is neither a "
                         "QuantizeLinear output nor an initializer; TensorRT may not fuse it")
            if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
                self._check_channel_axis(node, label, attrs.get("axis", 1))

    def _check_channel_axis(self, node: onnx.NodeProto, label: str, axis: int) -> None:
        rank = self.rank(node.input[0])
        for user, idx in self.consumers.get(node.output[0], []):
            if idx != 1 or user.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
                continue
            trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
            want = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if trans_b else 1}.get(user.op_type, -1)
            if rank is not None:
                want, axis = want % rank, axis % rank
            elif (want < 0) != (axis < 0):
                continue
            if axis != want:
                self.add("warning", "qdq-axis", label, f"per-channel DequantizeLinear feeding {user.op_type} "
                         f"weights quantizes axis {axis}, not the output-channel axis {want}; TensorRT may fall back"
                         " to slow kernels or fail. Re-quantize per output channel")

    def check_shape_tensors(self) -> None:
        inputs = {v.name for v in self.real_inputs}
        for node in _walk(self.graph):
            label = _label(node)
            for idx in _SHAPE_OPERANDS.get(node.op_type, ()):
                name = node.input[idx] if idx < len(node.input) else ""
                src = self.producer.get(name)
                while src is not None and src.op_type in ("Cast", "Identity"):
                    name, src = src.input[0], self.producer.get(src.input[0])
                if name in inputs:
                    self.add("error", "shape-tensor-input", label, f"graph input {name} is used as a shape tensor "
                             f"({node.op_type} input {idx}); TensorRT wants it computed inside the graph or baked in")
            axes = node.input[1] if node.op_type in _AXES_OPS and len(node.input) > 1 else ""
            if axes and self.const(axes) is None:
                self.add("error", "non-constant-axes", label, f"{node.op_type} axes '{axes}' are not a "
                         "constant; TensorRT needs build-time axes (use a constant/initializer)")

    def check_dynamic(self) -> None:
        specs = {t["name"]: t for t in (self.spec or {}).get("inputs", [])}
        for v in self.real_inputs:
            for axis, d in enumerate(v.type.tensor_type.shape.dim):
                if d.HasField("dim_value") and d.dim_value <= 0:
                    self.add("error", "bad-dim", v.name, f"graph input {v.name} axis {axis} has size {d.dim_value};"
                             " sizes must be positive (or symbolic with an optimization profile)")
                t = specs.get(v.name)
                if self.spec is None or d.HasField("dim_value") or _profile_ok(t):
                    continue
                self.add("error" if axis else "warning", "dynamic-shape", v.name, f"graph input {v.name} axis "
                         f"{axis} ('{d.dim_param or '?'}') is dynamic but the spec has no min/opt/max for it; "
                         "TensorRT needs an optimization profile: add min/opt/max or export it static")

    def check_spec(self) -> None:
        assert self.spec is not None
        for kind, values in (("inputs", list(self.real_inputs)), ("outputs", list(self.graph.output))):
            have = {v.name: v for v in values}
            want = {t["name"]: t for t in self.spec.get(kind, [])}
            for name, t in want.items():
                if name not in have:
                    self.add("error", "spec-mismatch", name, f"spec {kind[:-1]} '{name}' is not in the ONNX graph "
                             f"(graph {kind}: {sorted(have)}); re-export with the spec's names")
                    continue
                tt = have[name].type.tensor_type
                got = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
                if got != t.get("dtype", got):
                    self.add("error", "spec-mismatch", name, f"{kind[:-1]} '{name}' is {got} in ONNX but "
                             f"{t['dtype']} in the spec")
                if tt.HasField("shape") and len(tt.shape.dim) != len(t.get("shape", tt.shape.dim)):
                    self.add("error", "spec-mismatch", name, f"{kind[:-1]} '{name}' has rank {len(tt.shape.dim)} "
                             f"in ONNX but {len(t['shape'])} in the spec")
                if kind == "inputs" and any(isinstance(d, str) for d in t.get("shape", [])) and not _profile_ok(t):
                    self.add("error", "spec-profile", name, f"input '{name}' has dynamic axes {t['shape']} but no "
                             "valid min/opt/max (one per axis, 0 < min <= opt <= max); TensorRT needs an "
                             "optimization profile for each dynamic dimension")
            for name in sorted(set(have) - set(want)):
                self.add("error", "spec-mismatch", name, f"ONNX graph {kind[:-1]} '{name}' is missing from the spec")


def _profile_ok(t: dict | None) -> bool:
    """True when ``t`` has min/opt/max of the shape's rank with 0 < min <= opt <= max and fixed axes pinned."""
    shape = (t or {}).get("shape", [])
    if not t or not all(isinstance(t.get(k), list) and len(t[k]) == len(shape) for k in ("min", "opt", "max")):
        return False
    return all(0 < lo <= op <= hi and (isinstance(d, str) or lo == op == hi == d)
               for d, lo, op, hi in zip(shape, t["min"], t["opt"], t["max"]))


def _target(target: str) -> dict:
    if target not in TARGETS:
        raise ValueError(f"unknown TensorRT target {target!r}; known targets: {', '.join(sorted(TARGETS))}")
    return TARGETS[target]


def lint_model(model: onnx.ModelProto | str | Path, target: str = "trt10.3", spec: dict | None = None
               ) -> list[LintIssue]:
    """Lint an ONNX model (proto or path) against ``target``; ``spec`` is a manifest component I/O spec."""
    tgt = _target(target)
    if not isinstance(model, onnx.ModelProto):
        return lint_file(model, target, spec)
    linter = _Linter(model, tgt, spec)
    for check in (linter.check_opset, linter.check_ops, linter.check_dtypes, linter.check_qdq,
                  linter.check_shape_tensors, linter.check_dynamic) + ((linter.check_spec,) if spec else ()):
        check()
    return linter.issues


def lint_file(path: str | Path, target: str = "trt10.3", spec: dict | None = None) -> list[LintIssue]:
    """Load ``path`` (external data included) and lint it; raises FileNotFoundError/ValueError early."""
    _target(target)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}); pass an .onnx file or a "
                         f"bundle folder") from None
    return lint_model(model, target, spec)


def lint_bundle(bundle_dir: str | Path, target: str = "trt10.3") -> dict[str, list[LintIssue]]:
    """Lint every component of a bundle (``manifest.json`` + one ONNX per component) with its manifest spec; a
    component file that is not a plain name inside the bundle folder is refused (ValueError)."""
    _target(target)
    manifest_path = Path(bundle_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"bundle manifest not found: {manifest_path}")
    components = json.loads(manifest_path.read_text())["components"]
    return {name: lint_file(inside(manifest_path.parent, c["file"], f"{manifest_path}: components.{name}.file"),
                            target, {k: c[k] for k in ("inputs", "outputs", "opset") if k in c})
            for name, c in components.items()}


def format_issues(issues: list[LintIssue], path: str | Path) -> str:
    """Human-readable report: one line per issue, then ``PATH: N errors, M warnings``."""
    lines = [f"{path}: {i.level}: [{i.rule}] {i.node or '<model>'}: {i.message}" for i in issues]
    n_err = sum(i.level == "error" for i in issues)
    lines.append(f"{path}: {n_err} errors, {len(issues) - n_err} warnings")
    return "\n".join(lines)
