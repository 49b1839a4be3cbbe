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

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .backends import backend_info
from .fileio import cache_root
from .manifest import ComponentEntry, ComponentSpec

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
               "tensor(int32)": "int32"}


@dataclass(frozen=True)
class OrtMemory:
    """ONNX Runtime memory settings of one session (CPU execution provider; see :data:`MEMORY_PROFILES`).

    - ``cpu_arena`` (``SessionOptions.enable_cpu_mem_arena``): ONNX Runtime's BFC arena keeps every block a run
      allocated, grown in powers of two, for the next run. Fast for repeated calls with one shape, but each
      session then holds its own peak activation memory for good: with seven Ref-Diff components open, the
      sum of their peaks instead of the largest one. Off: activations go back to the system after each node.
    - ``mem_pattern`` (``enable_mem_pattern``): one pre-planned block per input shape, kept per session; off
      with the arena (it plans into the arena).
    - ``prepacking`` (config ``session.disable_prepacking`` = "0"): MatMul / Conv weights repacked once at load
      into the GEMM kernel's layout. ONNX Runtime releases the original (memory-mapped when it is external
      data), so it costs no second copy (ONNX Runtime 1.32, a 512 MB MatMul graph: 518 MB at load with it, the
      same after the first run without it); kept on.
    - ``max_batch``: :meth:`~.bundle.Bundle.run` splits a larger batch into runs of at most this many (only for
      components whose every input and output has the leading axis ``batch``; same results). The UNet's
      self-attention at 64 x 64 latents holds 2 x 8 x 4096 x 4096 float32 scores per uncond + cond pair
      (~2 GB at once); one by one halves that peak.
    """

    cpu_arena: bool = True
    mem_pattern: bool = True
    prepacking: bool = True
    max_batch: int | None = None

    def apply(self, opts: Any) -> None:
        """Set these fields on an ``onnxruntime.SessionOptions``."""
        opts.enable_cpu_mem_arena = self.cpu_arena
        opts.enable_mem_pattern = self.mem_pattern
        opts.add_session_config_entry("session.disable_prepacking", "0" if self.prepacking else "1")

    def to_dict(self) -> dict[str, bool | int | None]:
        return asdict(self)


#: "low": no CPU arena, no memory patterns, batch-axis inputs run one by one, so an open session
#: holds its weights and hands its activations back after each run (measured at full size:
#: benchmarks/results/refdiff-memory-cpu.json);
#: "speed": ONNX Runtime's defaults (each session keeps its peak activation memory for the next run).
MEMORY_PROFILES: dict[str, OrtMemory] = {"low": OrtMemory(cpu_arena=False, mem_pattern=False, max_batch=1),
                                          "speed": OrtMemory()}
#: "auto" (the default) picks "low" for bundles whose weights reach :data:`AUTO_LOW_BYTES` (full-size models,
#: where the arenas' held activations are gigabytes), "speed" for smaller ones (toy and tiny bundles keep ONNX
#: Runtime's defaults: batched runs, arenas reused between calls).
MEMORY_CHOICES = ("auto", *MEMORY_PROFILES)
DEFAULT_MEMORY = "auto"
AUTO_LOW_BYTES = 1 << 30


def memory_options(memory: str | OrtMemory, weight_bytes: int = 0) -> OrtMemory:
    """The :class:`OrtMemory` of profile ``memory`` (a name of :data:`MEMORY_CHOICES`, or an
    :class:`OrtMemory` used as it is); "auto" resolves by ``weight_bytes`` (the bundle's)."""
    if isinstance(memory, OrtMemory):
        return memory
    if memory == "auto":
        return MEMORY_PROFILES["low" if weight_bytes >= AUTO_LOW_BYTES else "speed"]
    if memory not in MEMORY_PROFILES:
        raise ValueError(f"memory profile {memory!r} is not one of {list(MEMORY_CHOICES)}")
    return MEMORY_PROFILES[memory]


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
    ``OnnxrtRunner``). ``threads``: intra-op threads (None: ONNX Runtime's default). ``memory``: an
    :class:`OrtMemory` (default: ONNX Runtime's own settings); ``self.memory`` holds the one applied."""

    def __init__(self, path: str | Path, entry: ComponentEntry, backend: str = "ort-cpu",
                 threads: int | None = None, rebuild: str = "re-export the bundle", memory: OrtMemory | None = None):
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
        self.memory = memory or MEMORY_PROFILES["speed"]  # None: ONNX Runtime's own defaults
        self.memory.apply(opts)
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
                 rebuild: str = "re-export the bundle", memory: OrtMemory | None = None) -> Session:
    """Open ``entry`` on ``backend`` (a canonical name of :data:`~.backends.BACKENDS`). ``path``: the ONNX
    file for ONNX Runtime backends, the engine plan for ``trt``. ``memory``: ONNX Runtime's memory settings
    (:class:`OrtMemory`; None: its defaults); TensorRT engines manage their own."""
    info = backend_info(backend)
    if info.session == "trt":
        from .trt_backend import TrtEngine  # tensorrt + cuda-python, imported only here

        return TrtEngine(path, entry, rebuild)
    if info.session == "ort":
        return OrtSession(path, entry, backend, threads, rebuild, memory)
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
