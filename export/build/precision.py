"""Precision recipes: FP16 graphs under a written keep-FP32 policy, INT8 as explicit Q/DQ (see ``quantize``).

TensorRT 11 has no FP16/INT8 builder flags: networks are strongly typed, so the precision lives in the ONNX
graph itself. The same ONNX therefore serves ONNX Runtime (CPU/CUDA/TensorRT EP) and TensorRT 10.3 / 11.

FP16 policy (``FP16_POLICY``), applied with ONNX Runtime's maintained float16 converter
(``onnxruntime.transformers.float16``, the fork of onnxconverter-common's; the latter's 1.16 release crashes on
our graphs in ``remove_unnecessary_cast_node``):
- graph inputs and outputs keep their FP32 dtypes (``keep_io_types``), so the manifest's I/O spec and the
  runtime's feeds do not change with precision;
- LayerNormalization, Softmax, every reduction (ReduceMean/Sum/L2/Max/LogSumExp...), Pow and Sqrt stay FP32:
  variance, the exponent sums of softmax and L2 norms overflow or lose precision in FP16;
- outputs a component lists in ``FP32_OUTPUTS`` (attention-probability maps) are computed by FP32 nodes;
- initializers outside FP16's range are clipped by the converter; the converter's warnings are counted and
  reported.
The converter appends its input casts at the end of the node list; :func:`toposort` restores the order ONNX
requires (ONNX Runtime segfaults on the unsorted graph).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8", "int8dyn")  # int8dyn: ONNX Runtime CPU dynamic INT8 (export/quantize.py)


@dataclass(frozen=True)
class Fp16Policy:
    keep_fp32_ops: tuple[str, ...] = (
        "LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax",
        "ReduceMin", "ReduceLogSumExp", "ReduceSumSquare", "Pow", "Sqrt", "GroupNormalization",
        "InstanceNormalization", "RandomNormalLike",
    )
    keep_io_types: bool = True
    fp32_outputs: tuple[str, ...] = ()  # graph outputs whose producing node stays FP32

    def to_dict(self) -> dict:
        return asdict(self)


FP16_POLICY = Fp16Policy()


def recipe_hash(recipe: dict) -> str:
    """Short stable hash of a precision recipe (part of the TensorRT engine-cache key)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def toposort(graph) -> None:
    """Sort ``graph.node`` topologically in place (Kahn's algorithm, stable for already-sorted graphs)."""
    known = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for i, n in enumerate(graph.node):
        # Names neither known nor produced (a broken graph) are left for onnx.checker to report.
        d = {producer[x] for x in n.input if x not in known and x in producer}
        deps.append(d)
        for j in d:
            users.setdefault(j, []).append(i)
    ready = deque(i for i, d in enumerate(deps) if not d)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, ()):
            deps[u].discard(i)
            if not deps[u]:
                ready.append(u)
    if len(order) != len(graph.node):
        raise ValueError("the converted graph has a cycle; cannot sort it topologically")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def drop_duplicate_nodes(graph) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes). The float16
    converter emits the same ``*_cast_to_fp32`` Cast twice when one FP16 tensor feeds two kept-FP32 nodes,
    which breaks ONNX's single-assignment rule. A different node writing the same name is a real error."""
    seen: dict[str, bytes] = {}
    keep, dropped = [], 0
    for n in graph.node:
        blob = n.SerializeToString()
        clash = [o for o in n.output if o in seen]
        if clash and all(seen[o] == blob for o in clash):
            dropped += 1
            continue
        if clash:
            raise ValueError(f"nodes writing {clash} differ; the converted graph is not valid ONNX")
        seen.update({o: blob for o in n.output})
        keep.append(n)
    if dropped:
        del graph.node[:]
        graph.node.extend(keep)
    return dropped


@dataclass
class ConversionReport:
    precision: str
    nodes: int
    nodes_fp32: int  # nodes left computing in FP32 (policy)
    clipped_constants: int  # converter warnings about values outside FP16's range
    notes: list[str] = field(default_factory=list)


def convert_fp16(src: str | Path, dst: str | Path, policy: Fp16Policy = FP16_POLICY,
                 fp32_outputs: tuple[str, ...] = (), external: bool = False) -> ConversionReport:
    """FP32 ONNX file -> FP16 ONNX file under ``policy`` (I/O dtypes unchanged). ``external``: save the result
    with its weights in one ``<dst>.data`` file (as for a source with external data; forced above 2 GB)."""
    import onnx
    from onnxruntime.transformers import float16

    from edgeseg.export.build.external import save_model, too_big

    model = onnx.load(str(src))  # external data (if any) loaded from beside src
    huge = too_big(model)  # shape inference and the in-memory checker need a model under protobuf's 2 GB
    outputs = set(policy.fp32_outputs) | set(fp32_outputs)
    node_block = [n.name for n in model.graph.node if outputs.intersection(n.output)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(
            model, keep_io_types=policy.keep_io_types, op_block_list=list(policy.keep_fp32_ops),
            node_block_list=node_block, disable_shape_infer=huge)
    dropped = drop_duplicate_nodes(model16.graph)
    toposort(model16.graph)
    if external or too_big(model16):
        save_model(model16, dst, external=True)
        onnx.checker.check_model(str(dst))  # by path: the checker reads the external data itself
    else:
        onnx.checker.check_model(model16)
        onnx.save(model16, str(dst))
    blocked = set(policy.keep_fp32_ops)
    n_fp32 = sum(1 for n in model16.graph.node if n.op_type in blocked or n.name in node_block)
    clipped = sum(1 for w in caught if "truncated" in str(w.message))
    notes = [f"dropped {dropped} duplicate cast node(s) the converter emitted"] if dropped else []
    return ConversionReport("fp16", len(model16.graph.node), n_fp32, clipped, notes)


def graph_dtypes(path: str | Path) -> dict[str, int]:
    """Count of float initializer elements per dtype name ("float32", "float16", "int8"...) in an ONNX file."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for t in model.graph.initializer:
        name = helper.tensor_dtype_to_np_dtype(t.data_type).name
        n = 1
        for d in t.dims:
            n *= d
        counts[name] = counts.get(name, 0) + n
    return counts
