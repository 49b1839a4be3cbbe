"""Bundles: a folder of ONNX files + ``manifest.json``. The runtime trusts the manifest only after checking it.

Checks on load: the manifest parses and has this runtime's format; every component file exists and its
sha256 matches; each ONNX Runtime session has exactly the manifest's input/output names and dtypes; the
execution provider asked for is the one that runs (ONNX Runtime would otherwise fall back to CPU silently);
a TensorRT engine matches this machine's TensorRT version and GPU (``trt_backend.check_engine``).

Providers: "cpu", "cuda", "tensorrt" are ONNX Runtime execution providers running the ONNX graphs; "trt" runs
the bundle's prebuilt TensorRT engines natively (tensorrt + cuda-python, no ONNX Runtime). The default is the
backend the bundle was built for (``manifest["backend"]``, ``ort-cpu`` for plain exports).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import cache_root, sha256_file
from .manifest import ComponentSpec, Manifest, ManifestError

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "edgeseg-bundle", 1
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
             "trt": "TensorRT engines (native)"}
BACKENDS = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt", "tensorrt": "trt"}  # build -> provider
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16",
               "tensor(int32)": "int32"}


class BundleError(ValueError):
    """A bundle that cannot be trusted: missing file, hash mismatch, I/O names that differ, bad manifest."""


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("onnxruntime is not installed; install the runtime with: pip install 'edgeseg[runtime]'") from e
    return onnxruntime


class Bundle:
    """Load and check a bundle; run its components with one ONNX Runtime provider.

    ``provider``: "cpu", "cuda", "tensorrt" (ONNX Runtime execution providers), "trt" (native TensorRT
    engines) or None for the bundle's own backend. No fallback: if the provider is unavailable or does not
    take the session, loading fails and says so.
    """

    def __init__(self, path: str | Path, provider: str | None = None, threads: int | None = None,
                 check_hashes: bool = True):
        self.path = Path(path)
        rebuild = f"re-export it (edgeseg export <method> CHECKPOINT --out {self.path})"
        if not self.path.is_dir():
            raise FileNotFoundError(f"bundle folder {str(self.path)!r} not found; {rebuild}")
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{self.path} has no {MANIFEST}: not a bundle, or an interrupted export; {rebuild}")
        try:
            self.manifest: dict = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); {rebuild}") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{mpath} has format {self.manifest.get('format')!r} v{self.manifest.get('format_version')}"
                              f", this runtime reads {FORMAT!r} v{FORMAT_VERSION}; {rebuild}")
        try:
            self.view = Manifest.from_dict(self.manifest)
        except ManifestError as e:
            raise BundleError(f"{mpath}: {e}; {rebuild}") from None
        backend = self.manifest.get("backend", "ort-cpu")
        if backend not in BACKENDS:
            raise BundleError(f"{mpath} names backend {backend!r}; this runtime knows {sorted(BACKENDS)}; {rebuild}")
        provider = provider or BACKENDS[backend]
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {sorted(PROVIDERS)}")
        self.provider, self.threads, self._rebuild = provider, threads, rebuild
        self._sessions: dict[str, Any] = {}
        for name, comp in self.components.items():
            f = self.path / comp["file"]
            if not f.is_file():
                raise BundleError(f"component {name!r}: file {f} is missing; {rebuild}")
            if check_hashes and sha256_file(f) != comp["sha256"]:
                raise BundleError(f"component {name!r}: {f} does not match the sha256 in the manifest (corrupt or "
                                  f"replaced file); {rebuild}")
            if provider == "trt":
                engine = comp.get("engine")
                if not engine:
                    raise BundleError(f"component {name!r} has no TensorRT engine in {mpath}; build one on the "
                                      f"target GPU: edgeseg build <fp32 bundle> --backend tensorrt "
                                      f"--precision {comp.get('precision', 'fp32')}")
                e = self.path / engine["file"]
                if not e.is_file() or (check_hashes and sha256_file(e) != engine["sha256"]):
                    raise BundleError(f"component {name!r}: engine {e} is missing or does not match its sha256; "
                                      f"rebuild it: {engine.get('command', 'edgeseg build ... --backend tensorrt')}")

    @property
    def components(self) -> dict[str, dict]:
        return self.manifest["components"]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def preprocessing(self) -> dict:
        return self.manifest["preprocessing"]

    def component_hash(self, name: str) -> str:
        return self.component(name)["sha256"]

    def component(self, name: str) -> dict:
        if name not in self.components:
            raise BundleError(f"bundle {self.path} ({self.method}) has no component {name!r}; it has "
                              f"{sorted(self.components)}")
        return self.components[name]

    def spec(self, name: str) -> ComponentSpec:
        """The typed I/O spec of a component, read by name: ``bundle.spec("unet_attn").input("sample").max[0]``."""
        self.component(name)
        return self.view.components[name].spec

    def session(self, name: str) -> Any:
        """The ONNX Runtime session of a component, created on first use and checked against the manifest."""
        if name in self._sessions:
            return self._sessions[name]
        comp = self.component(name)
        if self.provider == "trt":
            from .trt_backend import TrtEngine

            self._sessions[name] = TrtEngine(self.path / comp["engine"]["file"], comp, self._rebuild)
            return self._sessions[name]
        ort = _import_ort()
        want = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if want not in available:
            raise RuntimeError(f"provider {self.provider!r} ({want}) is not available in this onnxruntime "
                               f"(available: {available}); install onnxruntime-gpu for cuda/tensorrt, or use "
                               f"provider='cpu'")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        kwargs: dict[str, Any] = {}
        if comp.get("precision") == "fp16" and self.provider == "cpu":
            # ONNX Runtime 1.31's NCHWc layout transformer segfaults on FP16 graphs whose Convs it must
            # run in FP32 on CPU (no FP16 Conv kernel there); every other optimization stays on.
            kwargs["disabled_optimizers"] = ["NchwcTransformer"]
        options = _ort_trt_options(comp) if self.provider == "tensorrt" else None
        try:
            sess = ort.InferenceSession(str(self.path / comp["file"]), opts, providers=[want],
                                        provider_options=[options] if options else None, **kwargs)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"component {name!r}: onnxruntime cannot load {comp['file']} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {self._rebuild}") from None
        if sess.get_providers()[0] != want:
            raise RuntimeError(f"component {name!r} asked for {want} but onnxruntime runs it with "
                               f"{sess.get_providers()[0]}; refusing a silent fallback")
        self._check_io(name, comp, sess)
        self._sessions[name] = sess
        return sess

    def _check_io(self, name: str, comp: dict, sess: Any) -> None:
        for kind, metas in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            got = [(m.name, _ORT_DTYPES.get(m.type, m.type)) for m in metas]
            want = [(t["name"], t["dtype"]) for t in comp[kind]]
            if got != want:
                raise BundleError(f"component {name!r}: the ONNX {kind} {got} differ from the manifest's {want}; "
                                  f"manifest and model do not belong together; {self._rebuild}")

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a component. feeds: input name -> array; returns output name -> array."""
        spec = self.spec(name)
        for t in spec.inputs:
            if t.name not in feeds:
                raise ValueError(f"component {name!r} needs input {t.name!r}; got {sorted(feeds)}")
            arr = feeds[t.name]
            if str(arr.dtype) != t.dtype or arr.ndim != len(t.shape):
                raise ValueError(f"component {name!r} input {t.name!r}: got {arr.dtype} {arr.shape}, expected "
                                 f"{t.dtype} with shape {list(t.shape)}")
        sess = self.session(name)
        outs = sess.run(None, {t.name: feeds[t.name] for t in spec.inputs})
        return {t.name: o for t, o in zip(spec.outputs, outs)}

    @property
    def providers_used(self) -> dict[str, str]:
        return {n: s.get_providers()[0] for n, s in self._sessions.items()}


def _ort_trt_options(comp: dict) -> dict:
    """ONNX Runtime TensorRT EP options: the profile from the manifest's min/opt/max shapes, engine and timing
    caches under the edgeseg cache folder, INT8 from the graph's own Q/DQ nodes (no calibration table)."""
    from .trt_backend import profile_from_spec  # the same profile the native TensorRT builder uses

    root = cache_root() / "ort-trt" / comp["sha256"][:16]
    opts: dict[str, Any] = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(root),
                            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(root),
                            "trt_int8_enable": str(comp.get("precision") == "int8")}
    profile = profile_from_spec(comp)
    for key, which in (("trt_profile_min_shapes", "min"), ("trt_profile_opt_shapes", "opt"),
                       ("trt_profile_max_shapes", "max")):
        opts[key] = ",".join(f"{p['name']}:{'x'.join(str(d) for d in p[which])}" for p in profile)
    return opts
