"""FLOPs of an ONNX graph at given input shapes, counted from the graph (no framework profiler).

Counted: MatMul, Gemm, Conv, ConvTranspose, their quantized forms (MatMulInteger, QLinearMatMul, QLinearConv,
ConvInteger) and Einsum of two operands, at 2 FLOPs per multiply-add. Element-wise ops, softmax and norms
are left out (they are a few percent of a ViT's work and bound by memory, not compute). Shapes come from
ONNX shape inference after the graph inputs are fixed to the requested shapes; a node whose shapes cannot be
inferred is listed in ``unresolved`` rather than guessed.

    count_flops("engines/vitb16/clip_image.onnx", {"image": (1, 3, 224, 224)})
    -> FlopCount(total=35.2e9, by_op={"MatMul": ..., "Conv": ...}, unresolved=[])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"}
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}


@dataclass
class FlopCount:
    total: float
    by_op: dict[str, float] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # node names whose shapes were not inferred

    def to_dict(self) -> dict:
        return {"total": self.total, "gflops": self.total / 1e9, "by_op": self.by_op, "unresolved": self.unresolved}


def _fixed_model(path: str | Path, shapes: dict[str, tuple[int, ...]]):
    import onnx

    model = onnx.load(str(path))
    names = {i.name for i in model.graph.input}
    bad = sorted(set(shapes) - names)
    if bad:
        raise ValueError(f"{Path(path).name} has no input(s) {bad}; its inputs: {sorted(names)}")
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shapes[inp.name]):
                raise ValueError(f"input {inp.name!r} of {Path(path).name} has rank {len(dims)}; "
                                 f"got shape {shapes[inp.name]}")
            for d, v in zip(dims, shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shape_table(model) -> dict[str, tuple[int, ...] | None]:
    table: dict[str, tuple[int, ...] | None] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        table[vi.name] = None if (-1 in shape or not vi.type.tensor_type.HasField("shape")) else shape
    for init in model.graph.initializer:
        table[init.name] = tuple(init.dims)
    return table


def _node_flops(node, shapes: dict) -> float | None:
    op = node.op_type
    get = shapes.get
    if op in MATMUL_OPS:
        a_name = node.input[0]
        a, y = get(a_name), get(node.output[0])
        if a is None or y is None or not a:
            return None
        return 2.0 * float(np.prod(y)) * a[-1]
    if op == "Gemm":
        a, y = get(node.input[0]), get(node.output[0])
        if a is None or y is None:
            return None
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2.0 * float(np.prod(y)) * k
    if op in CONV_OPS:
        w_idx = 3 if op == "QLinearConv" else 1
        w, y = get(node.input[w_idx]), get(node.output[0])
        if w is None or y is None:
            return None
        if op == "ConvTranspose":
            x = get(node.input[0])
            return None if x is None else 2.0 * float(np.prod(x)) * float(np.prod(w[1:]))
        return 2.0 * float(np.prod(y)) * float(np.prod(w[1:]))  # w: Cout x Cin/groups x kh x kw
    if op == "Einsum" and len(node.input) == 2:
        eq = next(at.s.decode() for at in node.attribute if at.name == "equation")
        lhs, _ = eq.replace(" ", "").split("->")
        a_sub, b_sub = lhs.split(",")
        a, b = get(node.input[0]), get(node.input[1])
        if a is None or b is None:
            return None
        sizes = dict(zip(a_sub, a)) | dict(zip(b_sub, b))
        return 2.0 * float(np.prod([sizes[c] for c in set(a_sub) | set(b_sub)]))
    return 0.0


def count_flops(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> FlopCount:
    """FLOPs (2 per multiply-add) of one run of the ONNX file at the given input shapes."""
    model = _fixed_model(path, shapes)
    table = _shape_table(model)
    by_op: dict[str, float] = {}
    unresolved = []
    for node in model.graph.node:
        f = _node_flops(node, table)
        if f is None:
            unresolved.append(node.name or node.op_type)
        elif f:
            by_op[node.op_type] = by_op.get(node.op_type, 0.0) + f
    return FlopCount(sum(by_op.values()), by_op, unresolved)
