"""Native TensorRT backend: a bundle's prebuilt engines run with ``tensorrt`` + ``cuda-python`` (no torch, no
ONNX Runtime).

Written against the name-based I/O API that TensorRT 10.3 (JetPack 6, Jetson Orin) and TensorRT 11.x share:
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``; nothing that 11.x removed (bindings, ``device_memory_size``). I/O is bound by name from
the manifest; execution is asynchronous on one CUDA stream; components whose inputs have static shapes replay
a captured CUDA graph after the first call. :class:`TrtEngine` is the ``trt`` backend's
:class:`~.session.Session`: ``spec``, ``provider`` ("TensorRT <version>"), ``run(feeds) -> outputs by name``,
and device-resident I/O through :meth:`TrtEngine.device_io` (its buffers, context and stream).

Not executed in this repository's CI: TensorRT cannot be installed there. What runs there: the engine-key
and compatibility logic below (pure Python), and the refusal paths.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import ComponentEntry, ComponentSpec
from .session import BundleError

INSTALL_HINT = ("install TensorRT's Python package and cuda-python on the target: JetPack 6 ships TensorRT 10.3 "
                "(python3-libnvinfer); on servers: pip install tensorrt cuda-python")


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise ImportError(f"cuda-python is not installed ({e}); {INSTALL_HINT}") from None
    return cudart


def engine_key(onnx_sha256: str, recipe_hash: str, profile: list[dict], compute_capability: str,
               tensorrt_version: str, opt_level: int) -> str:
    """The engine-cache key: an engine is reusable only for the same ONNX, precision recipe, optimization
    profile, GPU compute capability, TensorRT version and builder optimization level."""
    facts = {"onnx": onnx_sha256, "recipe": recipe_hash, "profile": profile, "sm": compute_capability,
             "tensorrt": tensorrt_version, "opt_level": opt_level}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def profile_from_spec(component: dict | ComponentSpec) -> list[dict]:
    """One optimization profile from a manifest component entry (dict) or its :class:`ComponentSpec`:
    ``[{"name", "min", "opt", "max"}]`` per input, shapes as lists (fixed shapes repeat)."""
    inputs = [t.to_dict() for t in component.inputs] if isinstance(component, ComponentSpec) else component["inputs"]
    prof = []
    for t in inputs:
        fixed = [d for d in t["shape"]] if all(isinstance(d, int) for d in t["shape"]) else None
        if fixed is None and not t.get("min"):
            raise BundleError(f"input {t['name']!r} has dynamic axes {t['shape']} but no min/opt/max in the "
                              f"manifest; TensorRT needs them for its optimization profile (re-export)")
        prof.append({"name": t["name"], "min": t.get("min") or fixed, "opt": t.get("opt") or fixed,
                     "max": t.get("max") or fixed})
    return prof


def environment() -> dict:
    """This machine's TensorRT version and GPU (name, compute capability) as engine keys record them."""
    trt, cudart = import_tensorrt(), import_cudart()
    dev = _check(cudart.cudaGetDevice(), "cudaGetDevice")
    prop = _check(cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"tensorrt": trt.__version__, "compute_capability": f"{prop.major}.{prop.minor}", "gpu": name}


def check_engine(engine: dict, env: dict, rebuild: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture (they do not load, or load
    and run wrong), naming the rebuild command."""
    for field, what in (("tensorrt", "TensorRT version"), ("compute_capability", "GPU compute capability")):
        if str(engine.get(field)) != str(env.get(field)):
            raise BundleError(f"engine {engine.get('file')} was built for {what} {engine.get(field)} "
                              f"({engine.get('gpu', '?')}); this machine has {env.get(field)} ({env.get('gpu', '?')}). "
                              f"Engines are not portable: rebuild on this machine with: "
                              f"{engine.get('command') or rebuild}")


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call {what} failed with {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) or None)


@dataclass(frozen=True)
class TrtDeviceIO:
    """Device-resident I/O of one engine: ``buffers`` (tensor name -> device pointer, sized for the profile's
    max shapes), the execution ``context`` (``set_input_shape`` per input, ``get_tensor_shape`` per output) and
    the CUDA ``stream`` that ``context.execute_async_v3(stream)`` runs on. Writing inputs into the buffers and
    reading outputs from them (device to device) is the caller's; nothing is synchronized for it."""

    buffers: dict[str, int]
    context: Any
    stream: Any


class TrtEngine:
    """One deserialized engine with its own execution context, stream and device buffers sized for the
    profile's max shapes: the ``trt`` backend's :class:`~.session.Session` (``run(feeds)``: host arrays by
    input name -> host arrays by output name). ``plan``: the engine file; ``entry``: its manifest component
    (the engine facts in ``entry.engine`` are checked against this machine first)."""

    supports_device_io = True

    def __init__(self, plan: str | Path, entry: ComponentEntry, rebuild: str, cuda_graphs: bool = True):
        trt, self.cudart = import_tensorrt(), import_cudart()
        check_engine(entry.engine or {}, environment(), rebuild)
        self.spec: ComponentSpec = entry.spec
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot deserialize {plan} (corrupt, or built by another TensorRT); {rebuild}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.version = trt.__version__
        self.provider = f"TensorRT {self.version}"
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        want = self.spec.input_names, self.spec.output_names
        if (self.inputs, self.outputs) != want:
            raise BundleError(f"engine {plan} has I/O {self.inputs} -> {self.outputs}, the manifest {want[0]} -> "
                              f"{want[1]}; {rebuild}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        for p in profile_from_spec(self.spec):  # size every buffer for the largest shapes
            self.context.set_input_shape(p["name"], tuple(p["max"]))
        self.buffers = {}
        for n in names:
            nbytes = int(np.prod(tuple(self.context.get_tensor_shape(n)))) * self.dtypes[n].itemsize
            self.buffers[n] = _check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.context.set_tensor_address(n, int(self.buffers[n]))
        static = all(all(isinstance(d, int) for d in t.shape) for t in self.spec.inputs)
        self.use_graph, self.graph_exec, self.warm = cuda_graphs and static, None, False

    def device_io(self) -> TrtDeviceIO:
        """The engine's device buffers, context and stream (see :class:`TrtDeviceIO`)."""
        return TrtDeviceIO({n: int(p) for n, p in self.buffers.items()}, self.context, self.stream)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: input name -> host array; returns output name -> host array (copied back, synchronized)."""
        rt, kind = self.cudart, self.cudart.cudaMemcpyKind
        for n in self.inputs:
            x = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
            if not self.context.set_input_shape(n, x.shape):
                raise ValueError(f"input {n!r} shape {x.shape} is outside the engine's optimization profile")
            _check(rt.cudaMemcpyAsync(self.buffers[n], x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice,
                                      self.stream), "cudaMemcpyAsync H2D")
        if self.graph_exec is not None:
            _check(rt.cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")
        elif self.use_graph and self.warm:  # shapes are settled: capture once, replay from now on
            _check(rt.cudaStreamBeginCapture(self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                   "cudaStreamBeginCapture")
            self.context.execute_async_v3(self.stream)
            graph = _check(rt.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            self.graph_exec = _check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            _check(rt.cudaGraphLaunch(self.graph_exec, self.stream), "cudaGraphLaunch")
        else:
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            self.warm = True
        outs = {}
        for n in self.outputs:
            y = np.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n])
            _check(rt.cudaMemcpyAsync(y.ctypes.data, self.buffers[n], y.nbytes, kind.cudaMemcpyDeviceToHost,
                                      self.stream), "cudaMemcpyAsync D2H")
            outs[n] = y
        _check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return outs

    def __del__(self) -> None:
        rt = getattr(self, "cudart", None)
        for ptr in getattr(self, "buffers", {}).values():
            rt.cudaFree(ptr)
