"""One interface for every backend: a :class:`Session` runs one bundle component, feeds and outputs by name.

Modelled on ``onnxruntime.InferenceSession`` (typed ``get_inputs`` / ``get_outputs``, ``get_providers``,
``run``, ``io_binding``), reduced to what the runtime needs:

    sess = open_session("ort-cpu", bundle.path / entry.file, entry)      # or Bundle.session(name)
    sess.spec.input("image").max                   # typed I/O from the manifest (ComponentSpec)
    sess.provider                                  # what actually runs it: "CPUExecutionProvider", "TensorRT 10.3.0"
    out = sess.run({"image": x})                   # {"pixel_embeds": B x 128 x 48 x 48 float32}

Implementations: :class:`OrtSession` (``ort-cpu``, ``ort-cuda``, ``ort-trt``) here and
:class:`~.trt_backend.TrtEngine` (``trt``, native engines). Every implementation checks its model's I/O names
and dtypes against the manifest when it opens, and never falls back to another backend. :class:`~.bundle.Bundle`
opens one session per component with :func:`open_session` and validates feeds against the spec before
``session.run``. The backend names are :data:`~.backends.BACKENDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .backends import backend_info
from .fileio import cache_root
from .manifest import ComponentEntry, ComponentSpec

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
               "tensor(int32)": "int32"}


class BundleError(ValueError):
    """A bundle that cannot be trusted: missing file, hash mismatch, I/O names that differ, bad manifest."""


class DeviceIOUnsupported(RuntimeError):
    """``device_io()`` on a session whose backend keeps its I/O on the host (``supports_device_io`` False)."""


@runtime_checkable
class Session(Protocol):
    """A loaded component on one backend.

    - ``spec``: the component's :class:`ComponentSpec` from the manifest (inputs / outputs in graph order, with
      dtypes, shapes and the min/opt/max profile); the model's own I/O was checked against it on opening.
    - ``provider``: what actually runs it (an ONNX Runtime execution provider such as
      ``"CPUExecutionProvider"``, or ``"TensorRT <version>"``); ``Bundle.providers_used`` reports it.
    - ``run(feeds)``: host arrays by input name (every input of the spec, its dtype) -> host arrays by output
      name, in the spec's output order. No validation beyond the backend's own: ``Bundle.run`` checks feeds.
    - ``supports_device_io`` / ``device_io()``: device-resident I/O, for callers that keep tensors on the GPU
      between components. ``device_io()`` returns the backend's own handle (ONNX Runtime: a fresh
      ``onnxruntime.IOBinding``, run with ``inference_session.run_with_iobinding``; TensorRT: a
      :class:`~.trt_backend.TrtDeviceIO` with the engine's device buffers, execution context and CUDA stream)
      and raises :class:`DeviceIOUnsupported` where ``supports_device_io`` is False.
    """

    spec: ComponentSpec
    provider: str
    supports_device_io: bool

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: input name -> array; returns output name -> array."""
        ...

    def device_io(self) -> Any:
        """The backend's handle for device-resident I/O (see the class docstring)."""
        ...


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("onnxruntime is not installed; install the runtime with: "
                          "pip install 'edgeseg[runtime]'") from e
    return onnxruntime


class OrtSession:
    """A component on ONNX Runtime with the execution provider of ``backend`` (``ort-cpu`` / ``ort-cuda`` /
    ``ort-trt``) and nothing else: unavailable providers and silent fallbacks are refused.

    ``inference_session`` is the underlying ``onnxruntime.InferenceSession`` (for tools such as polygraphy's
    ``OnnxrtRunner``). ``threads``: intra-op threads (None: ONNX Runtime's default)."""

    def __init__(self, path: str | Path, entry: ComponentEntry, backend: str = "ort-cpu",
                 threads: int | None = None, rebuild: str = "re-export the bundle"):
        info = backend_info(backend)
        if info.ort_provider is None:
            raise ValueError(f"backend {backend!r} does not run on ONNX Runtime; open it with open_session()")
        ort = _import_ort()
        self.spec, self.backend, self.rebuild = entry.spec, backend, rebuild
        want = info.ort_provider
        available = ort.get_available_providers()
        if want not in available:
            raise RuntimeError(f"provider {backend!r} ({want}) is not available in this onnxruntime "
                               f"(available: {available}); install onnxruntime-gpu for ort-cuda/ort-trt, or use "
                               f"provider='ort-cpu'")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        kwargs: dict[str, Any] = {}
        if entry.precision == "fp16" and backend == "ort-cpu":
            # ONNX Runtime 1.31's NCHWc layout transformer segfaults on FP16 graphs whose Convs it must
            # run in FP32 on CPU (no FP16 Conv kernel there); every other optimization stays on.
            kwargs["disabled_optimizers"] = ["NchwcTransformer"]
        options = _ort_trt_options(entry) if backend == "ort-trt" else None
        try:
            sess = ort.InferenceSession(str(path), opts, providers=[want],
                                        provider_options=[options] if options else None, **kwargs)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"component {entry.name!r}: onnxruntime cannot load {entry.file} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {rebuild}") from None
        if sess.get_providers()[0] != want:
            raise RuntimeError(f"component {entry.name!r} asked for {want} but onnxruntime runs it with "
                               f"{sess.get_providers()[0]}; refusing a silent fallback")
        self.inference_session = sess
        self.provider: str = sess.get_providers()[0]
        self.supports_device_io: bool = info.device == "cuda"
        self._check_io()

    def _check_io(self) -> None:
        sess = self.inference_session
        for kind, metas, tensors in (("inputs", sess.get_inputs(), self.spec.inputs),
                                     ("outputs", sess.get_outputs(), self.spec.outputs)):
            got = [(m.name, _ORT_DTYPES.get(m.type, m.type)) for m in metas]
            want = [(t.name, t.dtype) for t in tensors]
            if got != want:
                raise BundleError(f"component {self.spec.name!r}: the ONNX {kind} {got} differ from the manifest's "
                                  f"{want}; manifest and model do not belong together; {self.rebuild}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: input name -> host array; returns output name -> host array (the spec's output order)."""
        names = self.spec.output_names
        return dict(zip(names, self.inference_session.run(names, feeds)))

    def device_io(self) -> Any:
        """A fresh ``onnxruntime.IOBinding`` (bind device ``OrtValue``s by name, then
        ``inference_session.run_with_iobinding(binding)``); ort-cuda / ort-trt only."""
        if not self.supports_device_io:
            raise DeviceIOUnsupported(f"component {self.spec.name!r} runs on {self.backend} ({self.provider}): "
                                      f"its I/O lives on the host; use run(feeds), or open it with ort-cuda")
        return self.inference_session.io_binding()


def open_session(backend: str, path: str | Path, entry: ComponentEntry, threads: int | None = None,
                 rebuild: str = "re-export the bundle") -> Session:
    """Open ``entry`` on ``backend`` (a canonical name of :data:`~.backends.BACKENDS`). ``path``: the ONNX
    file for ONNX Runtime backends, the engine plan for ``trt``."""
    info = backend_info(backend)
    if info.session == "trt":
        from .trt_backend import TrtEngine  # tensorrt + cuda-python, imported only here

        return TrtEngine(path, entry, rebuild)
    if info.session == "ort":
        return OrtSession(path, entry, backend, threads, rebuild)
    raise ValueError(f"backend {backend!r} names session kind {info.session!r}, which open_session does not know; "
                     f"add its branch here (see runtime/backends.py)")


def _ort_trt_options(entry: ComponentEntry) -> dict:
    """ONNX Runtime TensorRT EP options: the profile from the manifest's min/opt/max shapes, engine and timing
    caches under the edgeseg cache folder, INT8 from the graph's own Q/DQ nodes (no calibration table)."""
    from .trt_backend import profile_from_spec  # the same profile the native TensorRT builder uses

    root = cache_root() / "ort-trt" / entry.sha256[:16]
    opts: dict[str, Any] = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(root),
                            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(root),
                            "trt_int8_enable": str(entry.precision == "int8")}
    profile = profile_from_spec(entry.spec)
    for key, which in (("trt_profile_min_shapes", "min"), ("trt_profile_opt_shapes", "opt"),
                       ("trt_profile_max_shapes", "max")):
        opts[key] = ",".join(f"{p['name']}:{'x'.join(str(d) for d in p[which])}" for p in profile)
    return opts
