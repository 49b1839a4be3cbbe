"""Bundles: a folder of ONNX files + ``manifest.json``. The runtime trusts the manifest only after checking it.

Checks on load: the manifest parses and has this runtime's format; every component file exists and its
sha256 matches. Checks when a component's :class:`~.session.Session` opens: the model has exactly the
manifest's input/output names and dtypes; the backend asked for is the one that runs it (ONNX Runtime would
otherwise fall back to CPU silently); a TensorRT engine matches this machine's TensorRT version and GPU
(``trt_backend.check_engine``).

Backends (:mod:`.backends`, one vocabulary for build, runtime, bench and CLI): ``ort-cpu``, ``ort-cuda``,
``ort-trt`` run the ONNX graphs on ONNX Runtime with its CPU / CUDA / TensorRT execution provider; ``trt`` runs
the bundle's prebuilt TensorRT engines natively (tensorrt + cuda-python, no ONNX Runtime). The default is the
backend the bundle was built for (``manifest["backend"]``, ``ort-cpu`` for plain exports; ``"tensorrt"`` in
older manifests reads as ``trt``). Old provider spellings (``cpu``, ``cuda``, ``tensorrt``) still work and warn.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from .backends import BACKENDS, resolve_backend
from .fileio import sha256_file
from .manifest import ComponentEntry, ComponentSpec, Manifest, ManifestError
from .session import BundleError, Session, open_session

__all__ = ["BACKENDS", "MANIFEST", "Bundle", "BundleError", "FORMAT", "FORMAT_VERSION"]

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "edgeseg-bundle", 1


class Bundle:
    """Load and check a bundle; run its components on one backend, one :class:`~.session.Session` each.

    ``provider``: a backend name of :data:`~.backends.BACKENDS` (``ort-cpu``, ``ort-cuda``, ``ort-trt``,
    ``trt``; old spellings warn) or None for the bundle's own backend; ``self.provider`` holds the canonical
    name. No fallback: if the backend is unavailable or does not take the model, loading fails and says so.
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
        backend = self.view.backend  # the manifest's, old spellings mapped ("tensorrt" -> "trt")
        if backend not in BACKENDS:
            raise BundleError(f"{mpath} names backend {backend!r}; this runtime knows {sorted(BACKENDS)}; {rebuild}")
        provider = resolve_backend(provider, "provider") if provider else backend  # UnknownBackendError: one line
        self.provider, self.threads, self._rebuild = provider, threads, rebuild
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # sessions are opened once even when threads ask at the same time
        for name, comp in self.components.items():
            f = self.path / comp["file"]
            if not f.is_file():
                raise BundleError(f"component {name!r}: file {f} is missing; {rebuild}")
            if check_hashes and sha256_file(f) != comp["sha256"]:
                raise BundleError(f"component {name!r}: {f} does not match the sha256 in the manifest (corrupt or "
                                  f"replaced file); {rebuild}")
            if BACKENDS[provider].engines:
                engine = comp.get("engine")
                if not engine:
                    raise BundleError(f"component {name!r} has no TensorRT engine in {mpath}; build one on the "
                                      f"target GPU: edgeseg build <fp32 bundle> --backend {provider} "
                                      f"--precision {comp.get('precision', 'fp32')}")
                e = self.path / engine["file"]
                if not e.is_file() or (check_hashes and sha256_file(e) != engine["sha256"]):
                    raise BundleError(f"component {name!r}: engine {e} is missing or does not match its sha256; "
                                      f"rebuild it: {engine.get('command', f'edgeseg build ... --backend {provider}')}")

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

    def entry(self, name: str) -> ComponentEntry:
        """The typed manifest entry of a component (file, sha256, precision, spec, engine)."""
        self.component(name)
        return self.view.components[name]

    def session(self, name: str) -> Session:
        """The :class:`~.session.Session` of a component on this bundle's backend, opened on first use (and
        checked against the manifest then)."""
        if name in self._sessions:
            return self._sessions[name]
        with self._lock:
            if name not in self._sessions:
                entry = self.entry(name)
                model = entry.engine["file"] if BACKENDS[self.provider].engines else entry.file
                self._sessions[name] = open_session(self.provider, self.path / model, entry, self.threads,
                                                    self._rebuild)
        return self._sessions[name]

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
        return self.session(name).run({t.name: feeds[t.name] for t in spec.inputs})

    @property
    def providers_used(self) -> dict[str, str]:
        """component -> what runs it (``Session.provider``), for the sessions opened so far."""
        return {n: s.provider for n, s in dict(self._sessions).items()}  # a copy: other threads may be adding

