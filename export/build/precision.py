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
- initializers outside FP16's range are clipped by the converter; the clipped initializers are counted and
  reported.
Graphs with external data (over 2 GB: SD's UNet) are converted without loading their weights: the weightless
graph goes through the converter, the weights are converted tensor by tensor into one ``<graph>.data`` file
(:func:`_convert_streaming`); ``stream_threshold`` forces that path on smaller graphs (tests).
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
STREAM_THRESHOLD = 1 << 30  # bytes: single-file graphs this large are converted tensor by tensor, too
INLINE_BYTES = 1024  # bytes: smaller tensors stay in the graph (shape constants); larger go to the data file


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
    clipped_constants: int  # converted initializers holding values outside FP16's range (clipped)
    notes: list[str] = field(default_factory=list)


def convert_fp16(src: str | Path, dst: str | Path, policy: Fp16Policy = FP16_POLICY,
                 fp32_outputs: tuple[str, ...] = (), external: bool = False,
                 stream_threshold: int = STREAM_THRESHOLD) -> ConversionReport:
    """FP32 ONNX file -> FP16 ONNX file under ``policy`` (I/O dtypes unchanged). ``external``: save the result
    with its weights in one ``<dst>.data`` file (as for a source with external data).

    A source with external data, or whose file is ``stream_threshold`` bytes or more, is converted by
    :func:`_convert_streaming` (the graph without its weights in memory, weights converted tensor by tensor);
    its result always has external data. Smaller single-file graphs are converted in memory."""
    from edgeseg.runtime.integrity import external_data_locations

    src = Path(src)
    refs = external_data_locations(src)
    if refs is None:
        raise ValueError(f"{src} is not a readable ONNX model; re-export the bundle")
    if refs or src.stat().st_size >= stream_threshold:
        return _convert_streaming(src, Path(dst), policy, fp32_outputs)
    import numpy as np
    import onnx

    from edgeseg.export.build.external import save_model, too_big

    model = onnx.load(str(src))
    clips = {t.name for t in _initializers(model.graph) if t.data_type == onnx.TensorProto.FLOAT and t.raw_data
             and _clips(np.frombuffer(t.raw_data, dtype="<f4"))}
    model16, node_block, dropped, _ = _convert_graph(model, policy, fp32_outputs)
    clipped = sum(1 for t in _initializers(model16.graph)
                  if t.name in clips and t.data_type == onnx.TensorProto.FLOAT16)
    if external or too_big(model16):
        save_model(model16, dst, external=True)
        onnx.checker.check_model(str(dst))  # by path: the checker reads the external data itself
    else:
        onnx.checker.check_model(model16)
        onnx.save(model16, str(dst))
    return _report(model16, policy, node_block, dropped, clipped)


def _convert_graph(model, policy: Fp16Policy, fp32_outputs: tuple[str, ...]) -> tuple:
    """The float16 converter under ``policy`` on a ModelProto (shape inference in memory: the caller keeps the
    proto under 2 GB), duplicate casts dropped, nodes sorted. Returns (model16, node_block, dropped, clipped).

    The converter reads each converted initializer's shape through ``numpy_helper.to_array`` (the whole
    tensor); for the weightless graph of :func:`_convert_streaming` it gets the shape from the tensor's dims
    instead, which is the same shape without reading external data."""
    from unittest import mock

    from onnx import helper
    from onnxruntime.transformers import float16

    def value_info(tensor):  # float16.make_value_info_from_tensor without loading the data
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    outputs = set(policy.fp32_outputs) | set(fp32_outputs)
    node_block = [n.name for n in model.graph.node if outputs.intersection(n.output)]
    with warnings.catch_warnings(record=True) as caught, \
            mock.patch.object(float16, "make_value_info_from_tensor", value_info):
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(
            model, keep_io_types=policy.keep_io_types, op_block_list=list(policy.keep_fp32_ops),
            node_block_list=node_block)
    dropped = drop_duplicate_nodes(model16.graph)
    toposort(model16.graph)
    return model16, node_block, dropped, sum(1 for w in caught if "truncated" in str(w.message))


def _report(model16, policy: Fp16Policy, node_block: list[str], dropped: int, clipped: int,
            notes: tuple[str, ...] = ()) -> ConversionReport:
    blocked = set(policy.keep_fp32_ops)
    n_fp32 = sum(1 for n in model16.graph.node if n.op_type in blocked or n.name in node_block)
    out = [f"dropped {dropped} duplicate cast node(s) the converter emitted"] if dropped else []
    return ConversionReport("fp16", len(model16.graph.node), n_fp32, clipped, out + list(notes))


def _convert_streaming(src: Path, dst: Path, policy: Fp16Policy, fp32_outputs: tuple[str, ...]) -> ConversionReport:
    """FP16 conversion that never holds the weights of the model at once (graphs over 2 GB: SD's UNet).

    1. the graph is loaded without its external data; tensors under :data:`INLINE_BYTES` (shape constants)
       are read in, so shape inference (which the converter runs, on this weightless proto) sees them;
    2. the float16 converter marks the float initializers it converts FLOAT16 (their bytes stay in the source
       file: the converter cannot see them), inserts the policy's casts and sorts the nodes;
    3. the initializers are then written one by one to ``<dst>.data`` (page-aligned), each read from the
       source data file and converted with the converter's own clipping (``convert_np_to_float16``) when
       marked; inline tensors of :data:`INLINE_BYTES` or more are moved to the data file too.
    Peak memory: the weightless graph plus the largest tensor."""
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_np_to_float16

    from edgeseg.export.build.external import DataWriter, data_name, external_info, read_external

    model = onnx.load(str(src), load_external_data=False)
    source_type: dict[str, int] = {}  # initializer -> its FP32 file's data type, for the tensors left external
    for t in _initializers(model.graph):
        if external_info(t):
            if t.name in source_type:
                raise ValueError(f"{src}: initializer name {t.name!r} occurs twice; re-export the graph")
            if int(external_info(t).get("length", INLINE_BYTES)) < INLINE_BYTES:
                t.raw_data = read_external(t, src.parent)
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
            else:
                source_type[t.name] = t.data_type
    model16, node_block, dropped, clipped = _convert_graph(model, policy, fp32_outputs)
    data = dst.with_name(data_name(dst))
    with DataWriter(data) as writer:
        for t in _initializers(model16.graph):
            if t.name in source_type:
                raw = read_external(t, src.parent)
                if source_type[t.name] == TensorProto.FLOAT and t.data_type == TensorProto.FLOAT16:
                    x = np.frombuffer(raw, dtype="<f4")
                    clipped += _clips(x)
                    raw = convert_np_to_float16(x).astype("<f2").tobytes()
                writer.write(t, raw)
            elif t.HasField("raw_data") and len(t.raw_data) >= INLINE_BYTES:
                writer.write(t, t.raw_data)
    if not writer.written:
        data.unlink(missing_ok=True)
    onnx.save(model16, str(dst))  # the graph only: every large tensor lives in the data file
    onnx.checker.check_model(str(dst))  # by path: external data checked by the checker, not loaded here
    return _report(model16, policy, node_block, dropped, clipped,
                   (f"converted tensor by tensor into {data.name} ({writer.written} tensors); the graph was "
                    f"never held with its weights",))


def _clips(x) -> bool:
    """Whether the float32 array ``x`` holds finite values outside FP16's range (the converter clips them)."""
    import numpy as np

    a = np.abs(x)
    return bool(((a > 65504.0) & np.isfinite(a)).any() or ((a != 0) & (a < 5.96e-08)).any())


def _initializers(graph):
    """Every initializer of ``graph`` and of its subgraphs (If/Loop bodies)."""
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _initializers(g)


def graph_dtypes(path: str | Path) -> dict[str, int]:
    """Count of float initializer elements per dtype name ("float32", "float16", "int8"...) in an ONNX file."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)  # dims and types only: no weights read
    counts: dict[str, int] = {}
    for t in model.graph.initializer:
        name = helper.tensor_dtype_to_np_dtype(t.data_type).name
        n = 1
        for d in t.dims:
            n *= d
        counts[name] = counts.get(name, 0) + n
    return counts
