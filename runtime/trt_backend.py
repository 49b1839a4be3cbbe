"""Native TensorRT backend: a bundle's prebuilt engines run with ``tensorrt`` + ``cuda-python`` (no torch, no
ONNX Runtime).

Written against the name-based I/O API that TensorRT 10.3 (JetPack 6, Jetson Orin) and TensorRT 11.x share:
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``; nothing that 11.x removed (bindings, ``device_memory_size``). I/O is bound by name from
the manifest; execution is asynchronous on one CUDA stream; components whose inputs have static shapes replay
a captured CUDA graph after the first call.

Not executed in this repository's CI: TensorRT cannot be installed there. What runs there: the engine-key
and compatibility logic below (pure Python), and the refusal paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BundleError

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


def profile_from_spec(component: dict) -> list[dict]:
    """One optimization profile from a manifest component: min/opt/max per input (fixed shapes repeat)."""
    prof = []
    for t in component["inputs"]:
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


class TrtEngine:
    """One deserialized engine with its own execution context, stream and device buffers sized for the
    profile's max shapes. ``run(feeds)`` has ``onnxruntime.InferenceSession.run``'s contract (name -> array)."""

    def __init__(self, plan: str | Path, component: dict, rebuild: str, cuda_graphs: bool = True):
        trt, self.cudart = import_tensorrt(), import_cudart()
        check_engine(component["engine"], environment(), rebuild)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot deserialize {plan} (corrupt, or built by another TensorRT); {rebuild}")
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.version = trt.__version__
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        want = [t["name"] for t in component["inputs"]], [t["name"] for t in component["outputs"]]
        if (self.inputs, self.outputs) != want:
            raise BundleError(f"engine {plan} has I/O {self.inputs} -> {self.outputs}, the manifest {want[0]} -> "
                              f"{want[1]}; {rebuild}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        for p in profile_from_spec(component):  # size every buffer for the largest shapes
            self.context.set_input_shape(p["name"], tuple(p["max"]))
        self.buffers = {}
        for n in names:
            nbytes = int(np.prod(tuple(self.context.get_tensor_shape(n)))) * self.dtypes[n].itemsize
            self.buffers[n] = _check(self.cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.context.set_tensor_address(n, int(self.buffers[n]))
        static = all(all(isinstance(d, int) for d in t["shape"]) for t in component["inputs"])
        self.use_graph, self.graph_exec, self.warm = cuda_graphs and static, None, False

    def get_providers(self) -> list[str]:
        return [f"TensorRT {self.version}"]

    def run(self, _output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
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
        outs = []
        for n in self.outputs:
            y = np.empty(tuple(self.context.get_tensor_shape(n)), self.dtypes[n])
            _check(rt.cudaMemcpyAsync(y.ctypes.data, self.buffers[n], y.nbytes, kind.cudaMemcpyDeviceToHost,
                                      self.stream), "cudaMemcpyAsync D2H")
            outs.append(y)
        _check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return outs

    def __del__(self) -> None:
        rt = getattr(self, "cudart", None)
        for ptr in getattr(self, "buffers", {}).values():
            rt.cudaFree(ptr)
