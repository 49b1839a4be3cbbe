"""INT8 calibration in bounded memory for graphs whose activations of one sample do not fit: the graph is cut,
in topological order, into chunks whose tensors fit a budget, and each chunk runs as its own small graph.

ONNX Runtime's calibrator makes every calibrated tensor a graph output, so one run of the full-size SD UNet at
512 px (one uncond + cond sample) returns ~12 GB at once, and it holds the model three times besides (killed at
24.2 GB RSS here, stop 21). :class:`ChunkedCalibrator` instead:

- infers tensor shapes on the graph without its weights and cuts the node list into chunks of at most
  ``budget`` bytes of float outputs and :data:`MAX_NODES` nodes (:func:`plan_chunks`);
- makes each chunk a graph of its own nodes, whose inputs are the tensors it reads from earlier chunks (or the
  feeds) and whose outputs are the tensors later chunks read plus the tensors to calibrate; the weights stay in
  the source's external-data file (read from the source's folder, never copied) and each chunk's session, with
  no memory arena, loads only its own;
- per sample, runs the chunks in turn, hands each calibrated tensor to onnxruntime's ``HistogramCollector``
  (the collector ``quantize_static`` uses, same method, bins and percentile; :func:`fast_collector` only bins
  the merge of later samples in O(n), with identical histograms) and frees it, keeping only the boundary tensors
  still to be read.

Every node runs once a sample, as in one run of the whole graph. The ranges are written in onnxruntime's
calibration-cache format (``save_tensors_data``) and ``quantize_static(..., calibration_cache_path=...)``
quantizes from them without running its own calibration. With one sample collected at a time the histograms
equal those of ``quantize_static`` with ``CalibStridedMinMax=1`` (tested). Tensors to calibrate: as
onnxruntime selects them, the float tensors read or written by nodes of the quantized op types, initializers
excepted. Torch-free (numpy, onnx, onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

FLOAT_TYPES = {1: 4, 10: 2}  # onnx.TensorProto.FLOAT, FLOAT16 -> bytes
MAX_NODES = 64  # nodes a chunk at most (~4 attention blocks' worth)


def tensor_sizes(path: str | Path, feeds: dict[str, np.ndarray]):
    """(the graph without its weights, shape-inferred at ``feeds``' shapes; {tensor: bytes} of its float
    tensors, unknown dims counted as the feeds' first dim). Raises what shape inference raises."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name in feeds:
            for d, n in zip(inp.type.tensor_type.shape.dim, feeds[inp.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    first = max((int(v.shape[0]) for v in feeds.values() if v.ndim), default=1)
    sizes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        t = vi.type.tensor_type
        if t.elem_type not in FLOAT_TYPES:
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.dim_value > 0 else first
        sizes[vi.name] = n * FLOAT_TYPES[t.elem_type]
    return model, sizes


def plan_chunks(nodes: list, sizes: dict[str, int], budget: int, max_nodes: int = MAX_NODES) -> list[list[int]]:
    """Node indices (topological order) cut into runs of at most ``max_nodes`` nodes whose float outputs total
    at most ``budget`` bytes (a node larger than the budget gets a chunk of its own). The node cap bounds what
    the sizes miss: shape inference leaves dims unknown after data-dependent reshapes (733 of the full-size
    UNet's float tensors, its attention scores among them), counted here as the feeds' first dim."""
    chunks: list[list[int]] = [[]]
    held = 0
    for i, node in enumerate(nodes):
        b = sum(sizes.get(o, 0) for o in node.output)
        if chunks[-1] and (held + b > budget or len(chunks[-1]) >= max_nodes):
            chunks.append([])
            held = 0
        chunks[-1].append(i)
        held += b
    return chunks


def calibration_tensors(graph, op_types: Iterable[str]) -> set[str]:
    """What onnxruntime's calibrator calibrates: float (by inferred type) non-initializer inputs and outputs of
    the nodes of ``op_types`` (all nodes when empty)."""
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
    inits = {t.name for t in graph.initializer}
    ops = set(op_types)
    return {t for n in graph.node if not ops or n.op_type in ops for t in list(n.input) + list(n.output)
            if t and t not in inits and types.get(t) in FLOAT_TYPES}


@dataclass
class _Chunk:
    model: bytes  # the chunk's graph, its weights referenced in the source's external-data file
    inputs: list[str]
    outputs: list[str]
    calibrated: list[str]
    session: object = field(default=None, repr=False)


class ChunkedCalibrator:
    """``ChunkedCalibrator(path, op_types, feeds, budget, method="Percentile")``: chunked
    calibration of the graph at ``path`` (its external data beside it); ``feeds`` is one sample (it fixes the
    shapes the plan is made for). :meth:`collect` per sample, then :meth:`tensors_data` / :meth:`save`."""

    def __init__(self, path: str | Path, op_types: Iterable[str], feeds: dict[str, np.ndarray], budget: int,
                 method: str = "Percentile"):
        import onnx

        self.path = Path(path)
        model, sizes = tensor_sizes(self.path, feeds)
        graph = model.graph
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
               for a in n.attribute):
            raise ValueError(f"{self.path.name} has control-flow nodes (If/Loop/Scan); chunked calibration "
                             f"cuts flat graphs only: calibrate it on a machine with more memory")
        self.method = method
        self.targets = calibration_tensors(graph, op_types)
        self.plan = plan_chunks(list(graph.node), sizes, budget)
        self.chunks = self._cut(model)
        self._last = {t: k for k, c in enumerate(self.chunks) for t in c.inputs}  # tensor -> last chunk reading it
        self.collector = None
        self.samples = 0

    def _cut(self, model) -> list[_Chunk]:
        import onnx

        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        vinfo = {vi.name: vi for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
        readers: dict[str, set[int]] = {}  # tensor -> chunks reading it
        for k, idx in enumerate(self.plan):
            for i in idx:
                for t in graph.node[i].input:
                    if t and t not in inits:
                        readers.setdefault(t, set()).add(k)
        chunks = []
        for k, idx in enumerate(self.plan):
            nodes = [graph.node[i] for i in idx]
            made = [o for n in nodes for o in n.output if o]
            made_set = set(made)
            needed = list(dict.fromkeys(t for n in nodes for t in n.input
                                        if t and t not in inits and t not in made_set))
            later = [t for t in made if any(r > k for r in readers.get(t, ()))]
            calibrated = [t for t in made if t in self.targets]
            outputs = list(dict.fromkeys(later + calibrated))
            if not outputs:  # nothing of it is calibrated or read later (the graph's own outputs): not run
                continue
            used_inits = list(dict.fromkeys(t for n in nodes for t in n.input if t in inits))
            sub = onnx.helper.make_graph(nodes, f"chunk{k}", [self._vi(t, vinfo) for t in needed],
                                         [self._vi(t, vinfo) for t in outputs], [inits[t] for t in used_inits])
            sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import),
                                               ir_version=model.ir_version)
            sub_model.functions.extend(model.functions)
            chunks.append(_Chunk(sub_model.SerializeToString(), needed, outputs, calibrated))
        return chunks

    @staticmethod
    def _vi(name: str, vinfo: dict):
        import onnx

        t = vinfo[name].type.tensor_type if name in vinfo else None
        if t is not None and t.elem_type:  # type only: samples may differ in their dynamic dims
            return onnx.helper.make_tensor_value_info(name, t.elem_type, None)
        raise ValueError(f"shape inference gave no type for tensor {name!r}; chunked calibration needs every "
                         f"tensor crossing a chunk typed (re-export the graph with a newer opset)")

    def _sessions(self) -> None:
        import onnxruntime as ort

        for c in self.chunks:
            if c.session is None:
                so = ort.SessionOptions()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as the calibrator
                # no arena, no memory pattern: a chunk's activations go back to the system after its run (with
                # an arena per session keeping each chunk's peak, the full-size UNet was killed at 24.3 GB)
                so.enable_cpu_mem_arena = False
                so.enable_mem_pattern = False
                # the chunk comes as bytes; its external weights are read from the source's folder (no file is
                # written or linked: onnxruntime refuses external data outside the model's folder)
                so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                            str(self.path.parent.resolve()))
                c.session = ort.InferenceSession(c.model, so, providers=["CPUExecutionProvider"])

    def _collector(self):
        if self.method not in ("Percentile", "Entropy"):
            raise ValueError(f"chunked calibration supports Percentile and Entropy, not {self.method!r}")
        if self.collector is None:  # create_calibrator's defaults for quantize_static's methods
            if self.method == "Percentile":
                self.collector = fast_collector()("percentile", True, 2048, 2048, 99.999, "same")
            else:
                from onnxruntime.quantization.calibrate import HistogramCollector

                self.collector = HistogramCollector("entropy", False, 128, 128, 99.999, "same")
        return self.collector

    def collect(self, feeds: dict[str, np.ndarray]) -> None:
        """Run every chunk on one sample, collecting its calibrated tensors as they come."""
        import contextlib
        import io

        self._sessions()
        collector = self._collector()
        env, last = dict(feeds), self._last
        with contextlib.redirect_stdout(io.StringIO()):  # the collector prints per call
            for t, v in feeds.items():
                if t in self.targets and v.dtype.kind == "f":
                    collector.collect({t: v})  # an array, not a one-item list: one copy fewer, same histogram
            for k, c in enumerate(self.chunks):
                produced = dict(zip(c.outputs, c.session.run(c.outputs, {t: env[t] for t in c.inputs})))
                for t in c.inputs:
                    if last.get(t) == k:
                        env.pop(t, None)
                env.update((t, v) for t, v in produced.items() if last.get(t, -1) > k)
                for t in c.calibrated:  # one tensor at a time, each freed once collected (unless read later)
                    collector.collect({t: produced.pop(t)})
                del produced
        self.samples += 1

    def collect_all(self, feeds: Iterable[dict[str, np.ndarray]]) -> int:
        for f in feeds:
            self.collect(f)
        return self.samples

    def tensors_data(self):
        """onnxruntime ``TensorsData`` of the collected ranges."""
        import contextlib
        import io

        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        if self.collector is None:
            raise ValueError(f"calibration of {self.path.name} saw no samples")
        with contextlib.redirect_stdout(io.StringIO()):
            result = self.collector.compute_collection_result()
        return TensorsData(getattr(CalibrationMethod, self.method), result)

    def save(self, cache: str | Path) -> Path:
        """Write the ranges as an onnxruntime calibration cache (``quantize_static``'s
        ``calibration_cache_path``)."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self.tensors_data(), cache)
        return Path(cache)

    def close(self) -> None:
        """Drop the chunks' sessions (their weights)."""
        for c in self.chunks:
            c.session = None


def histogram_on_edges(x: np.ndarray, edges: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """``np.histogram(x, bins=edges)[0]`` for increasing, nearly uniform ``edges`` (a histogram's own, grown
    by ``np.arange`` steps of its width), in O(n): each value's bin is guessed from the mean width, then
    corrected against the edges themselves (the same comparisons, in the same dtypes, as numpy's
    ``searchsorted`` path, which sorts every block first). Values outside [edges[0], edges[-1]] and NaNs are
    not counted; the last bin is closed."""
    n = len(edges) - 1
    lo_edges = edges[:-1]
    hi_edges = np.append(edges[1:-1], np.inf).astype(edges.dtype)  # last bin closed: nothing is above it
    scale = np.float32(n / (float(edges[-1]) - float(edges[0]))) if edges[-1] > edges[0] else np.float32(0)
    e0 = np.float32(edges[0])
    counts = np.zeros(n, np.int64)
    flat = x.reshape(-1)
    for s in range(0, flat.size, block):
        v = flat[s:s + block]
        inside = (v >= edges[0]) & (v <= edges[-1])
        if not inside.all():
            v = v[inside]
        if not v.size:
            continue
        idx = ((v - e0) * scale).astype(np.intp)  # a guess, off by a bin at most where rounding differs
        np.clip(idx, 0, n - 1, out=idx)
        while True:  # exact: edges[idx] <= v < edges[idx + 1]
            down = v < lo_edges[idx]
            up = v >= hi_edges[idx]
            if not (down.any() or up.any()):
                break
            idx -= down
            idx += up
        counts += np.bincount(idx, minlength=n)
    return counts


def fast_collector():
    """onnxruntime's ``HistogramCollector`` whose absolute-value merge (symmetric Percentile, each sample
    after the first) bins with :func:`histogram_on_edges` instead of ``np.histogram(bins=edges)``; everything
    else is onnxruntime's, and the histograms are identical (tested)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class _Fast(HistogramCollector):
        def collect_absolute_value(self, name_to_arr):
            for tensor, arr in name_to_arr.items():
                if tensor not in self.histogram_dict or isinstance(arr, list):
                    super().collect_absolute_value({tensor: arr})  # the first: uniform bins, numpy's fast path
                    continue
                data = np.absolute(arr.reshape(-1))
                lo, hi = (np.nanmin(arr), np.nanmax(arr)) if arr.size else (np.array(0, arr.dtype),) * 2
                old_hist, edges, old_min, old_max = self.histogram_dict[tensor]
                amax = np.nanmax(data)
                if amax > edges[-1]:  # grow by whole bins, as onnxruntime does
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, amax + width, width)))
                hist = histogram_on_edges(data, edges)
                edges = edges.astype(data.dtype)
                hist[: len(old_hist)] += old_hist
                self.histogram_dict[tensor] = (hist, edges, min(old_min, lo), max(old_max, hi))

    return _Fast
