"""Bundles: a folder of ONNX files + ``manifest.json``. The runtime trusts the manifest only after checking it.

Checks on load: the manifest parses, is an object of this runtime's format, and every number the runtime reads
is valid (:mod:`.manifest`, :mod:`.manifest_checks`); every file it names (component graphs, their ONNX
external data, tokenizers, TensorRT engines) is a plain name that resolves inside the bundle folder (symlinks
included), exists, and matches its sha256; every external-data file an ONNX graph refers to is listed in the
manifest (read from the graph's protobuf by :mod:`.integrity`, no onnx package needed). Checks when a
component's :class:`~.session.Session` opens: the model has exactly the manifest's input/output names and
dtypes; the backend asked for is the one that runs it (ONNX Runtime would otherwise fall back to CPU silently);
a TensorRT engine matches this machine's TensorRT version and GPU (``trt_backend.check_engine``). Checks on
every :meth:`Bundle.run`: each input's dtype, rank, fixed dims and the min/max of its dynamic axes.

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
from .integrity import external_data_locations, inside
from .manifest import ComponentEntry, ComponentSpec, Manifest, ManifestError, tokenizer_keys
from .session import DEFAULT_MEMORY, BundleError, OrtMemory, Session, memory_options, open_session

__all__ = ["BACKENDS", "MANIFEST", "Bundle", "BundleError", "FORMAT", "FORMAT_VERSION"]

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "edgeseg-bundle", 1


class Bundle:
    """Load and check a bundle; run its components on one backend, one :class:`~.session.Session` each.

    ``provider``: a backend name of :data:`~.backends.BACKENDS` (``ort-cpu``, ``ort-cuda``, ``ort-trt``,
    ``trt``; old spellings warn) or None for the bundle's own backend; ``self.provider`` holds the canonical
    name. No fallback: if the backend is unavailable or does not take the model, loading fails and says so.
    ``check_hashes=False`` skips the sha256 comparisons (names, containment and completeness are still checked).
    ``memory``: ONNX Runtime's memory profile of every session, a name of :data:`~.session.MEMORY_PROFILES` or
    an :class:`~.session.OrtMemory`: "low" opens them without the CPU arena and memory patterns, so that open
    sessions hold their weights and not their peak activations; "speed" keeps ONNX Runtime's defaults; "auto"
    (default) is "low" for bundles of >= 1 GiB of weights, else "speed". :meth:`memory_used` says what each
    opened session got; :meth:`close` drops one.
    """

    def __init__(self, path: str | Path, provider: str | None = None, threads: int | None = None,
                 check_hashes: bool = True, memory: str | OrtMemory = DEFAULT_MEMORY):
        self.path = Path(path)
        rebuild = f"re-export it (edgeseg export <method> CHECKPOINT --out {self.path})"
        if not self.path.is_dir():
            raise FileNotFoundError(f"bundle folder {str(self.path)!r} not found; {rebuild}")
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{self.path} has no {MANIFEST}: not a bundle, or an interrupted export; {rebuild}")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e}); {rebuild}") from None
        if not isinstance(manifest, dict):
            kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
                type(manifest), "null")
            raise BundleError(f"{mpath} holds a JSON {kind} ({json.dumps(manifest)[:40]}), not an object: not a "
                              f"bundle manifest; {rebuild}")
        self.manifest: dict = manifest
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{mpath} has format {manifest.get('format')!r} v{manifest.get('format_version')}"
                              f", this runtime reads {FORMAT!r} v{FORMAT_VERSION}; {rebuild}")
        try:
            self.view = Manifest.from_dict(manifest)
        except ManifestError as e:
            raise BundleError(f"{mpath}: {e}; {rebuild}") from None
        backend = self.view.backend  # the manifest's, old spellings mapped ("tensorrt" -> "trt")
        if backend not in BACKENDS:
            raise BundleError(f"{mpath} names backend {backend!r}; this runtime knows {sorted(BACKENDS)}; {rebuild}")
        provider = resolve_backend(provider, "provider") if provider else backend  # UnknownBackendError: one line
        memory_options(memory)  # ValueError naming the profiles, before anything opens
        self.provider, self.threads, self.memory, self._rebuild = provider, threads, memory, rebuild
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # sessions are opened once even when threads ask at the same time
        self._check_files(check_hashes)

    # ------------------------------------------------------------------ load-time checks
    def file(self, name: str, field: str = "file") -> Path:
        """The path of a file the manifest names, refused (BundleError) unless it lies inside the bundle."""
        try:
            return inside(self.path, name, field)
        except ValueError as e:
            raise BundleError(f"{self.path / MANIFEST}: {e}; {self._rebuild}") from None

    def _check_file(self, path: Path, sha256: str, what: str, check_hashes: bool) -> None:
        if not path.is_file():
            raise BundleError(f"{what}: file {path} is missing; {self._rebuild}")
        if check_hashes and sha256_file(path) != sha256:
            raise BundleError(f"{what}: {path} does not match the sha256 in the manifest (corrupt or replaced "
                              f"file); {self._rebuild}")

    def _check_files(self, check_hashes: bool) -> None:
        mpath = self.path / MANIFEST
        for name, entry in self.view.components.items():
            graph = self.file(entry.file, f"components.{name}.file")
            self._check_file(graph, entry.sha256, f"component {name!r}", check_hashes)
            for i, ext in enumerate(entry.external_data):
                f = self.file(ext.file, f"components.{name}.external_data[{i}].file")
                self._check_file(f, ext.sha256, f"component {name!r} (external data)", check_hashes)
            self._check_external_data(entry, graph)
            engine = entry.engine
            if engine is not None:
                self.file(engine["file"], f"components.{name}.engine.file")
            if BACKENDS[self.provider].engines:
                if not engine:
                    raise BundleError(f"component {name!r} has no TensorRT engine in {mpath}; build one on the "
                                      f"target GPU: edgeseg build <fp32 bundle> --backend {self.provider} "
                                      f"--precision {entry.precision}")
                e = self.path / engine["file"]
                if not e.is_file() or (check_hashes and sha256_file(e) != engine["sha256"]):
                    how = engine.get("command", f"edgeseg build ... --backend {self.provider}")
                    raise BundleError(f"component {name!r}: engine {e} is missing or does not match its sha256; "
                                      f"rebuild it: {how}")
        checked: set[tuple[str, str]] = set()  # Ref-Diff's two tokenizer entries share one file
        for key in tokenizer_keys(self.manifest):
            tok = self.manifest[key]
            f = self.file(tok["file"], f"{key}.file")
            if (tok["file"], tok["sha256"]) not in checked:
                self._check_file(f, tok["sha256"], f"tokenizer {key!r}", check_hashes)
                checked.add((tok["file"], tok["sha256"]))

    def _check_external_data(self, entry: ComponentEntry, graph: Path) -> None:
        """The external-data files the graph refers to must be exactly the ones the manifest lists (and hashes)."""
        refs = external_data_locations(graph)
        if refs is None:  # not a protobuf: ONNX Runtime refuses it with its own error when the session opens
            return
        listed = [e.file for e in entry.external_data]
        unlisted, unused = [r for r in refs if r not in listed], [x for x in listed if x not in refs]
        if unlisted:
            raise BundleError(f"component {entry.name!r}: {entry.file} loads external data {unlisted} that the "
                              f"manifest does not list with a sha256 (unverifiable weights); {self._rebuild}")
        if unused:
            raise BundleError(f"component {entry.name!r}: the manifest lists external data {unused} that "
                              f"{entry.file} does not use; manifest and model do not belong together; {self._rebuild}")

    # ------------------------------------------------------------------ the manifest, read
    @property
    def components(self) -> dict[str, dict]:
        return self.manifest["components"]

    @property
    def method(self) -> str:
        return self.view.method

    @property
    def preprocessing(self) -> dict:
        return self.view.preprocessing

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
        """The typed manifest entry of a component (file, sha256, precision, spec, external data, engine)."""
        self.component(name)
        return self.view.components[name]

    def tokenizer_facts(self, key: str = "tokenizer") -> dict:
        """A checked tokenizer entry of the manifest (``tokenizer``, or Ref-Diff's ``sd_tokenizer``)."""
        if key not in tokenizer_keys(self.manifest):
            raise BundleError(f"bundle {self.path} ({self.method}) has no {key!r} entry in its manifest; "
                              f"{self._rebuild}")
        return self.manifest[key]

    # ------------------------------------------------------------------ running
    def session(self, name: str) -> Session:
        """The :class:`~.session.Session` of a component on this bundle's backend, opened on first use (and
        checked against the manifest then)."""
        if name in self._sessions:
            return self._sessions[name]
        with self._lock:
            if name not in self._sessions:
                entry = self.entry(name)
                model = entry.engine["file"] if BACKENDS[self.provider].engines and entry.engine else entry.file
                memory = memory_options(self.memory, self._all_weight_bytes() if self.memory == "auto" else 0)
                self._sessions[name] = open_session(self.provider, self.file(model), entry, self.threads,
                                                    self._rebuild, memory)
        return self._sessions[name]

    def weight_bytes(self, name: str) -> int:
        """Bytes of a component's ONNX graph file plus its external-data files (its weights, near enough)."""
        entry = self.entry(name)
        return sum(self.file(f).stat().st_size for f in [entry.file, *(e.file for e in entry.external_data)])

    def _all_weight_bytes(self) -> int:
        """Bytes of every component's files (what "auto" memory decides by)."""
        return sum(self.weight_bytes(n) for n in self.components)

    def close(self, name: str) -> bool:
        """Drop a component's open session (its weights and buffers are freed when nothing else holds it);
        the next :meth:`run` opens it again. Returns whether one was open."""
        with self._lock:
            return self._sessions.pop(name, None) is not None

    def memory_used(self) -> dict[str, dict]:
        """component -> the ONNX Runtime memory settings its open session got (:class:`~.session.OrtMemory`)."""
        return {n: s.memory.to_dict() for n, s in dict(self._sessions).items() if hasattr(s, "memory")}

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a component. feeds: input name -> array (dtype, rank, fixed dims and the min/max of the dynamic
        axes checked against the manifest); returns output name -> array."""
        spec = self.spec(name)
        for t in spec.inputs:
            if t.name not in feeds:
                raise ValueError(f"component {name!r} needs input {t.name!r}; got {sorted(feeds)}")
            arr = feeds[t.name]
            if str(arr.dtype) != t.dtype or arr.ndim != len(t.shape):
                raise ValueError(f"component {name!r} input {t.name!r}: got {arr.dtype} {arr.shape}, expected "
                                 f"{t.dtype} with shape {list(t.shape)}")
            for axis, (n, dim) in enumerate(zip(arr.shape, t.shape)):
                if isinstance(dim, int) and n != dim:
                    raise ValueError(f"component {name!r} input {t.name!r} axis {axis} is {n}; the manifest fixes "
                                     f"it at {dim} (shape {list(t.shape)})")
                if t.min and not t.min[axis] <= n <= t.max[axis]:
                    raise ValueError(f"component {name!r} input {t.name!r} axis {axis} ({dim}) is {n}, outside the "
                                     f"manifest's range [{t.min[axis]}, {t.max[axis]}]; split the input into "
                                     f"chunks within it")
        feeds = {t.name: feeds[t.name] for t in spec.inputs}
        session = self.session(name)
        limit = getattr(getattr(session, "memory", None), "max_batch", None)
        n = next(iter(feeds.values())).shape[0] if feeds else 0
        if limit and n > limit and _batch_axis(spec):  # bounded activations: runs of at most ``limit``
            parts = [session.run({k: v[i:i + limit] for k, v in feeds.items()}) for i in range(0, n, limit)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return session.run(feeds)

    @property
    def providers_used(self) -> dict[str, str]:
        """component -> what runs it (``Session.provider``), for the sessions opened so far."""
        return {n: s.provider for n, s in dict(self._sessions).items()}  # a copy: other threads may be adding


def _batch_axis(spec: ComponentSpec) -> bool:
    """Whether every input and output of ``spec`` has the leading axis ``batch`` (rows independent: a run can
    be split along it)."""
    return all(t.shape and t.shape[0] == "batch" for t in (*spec.inputs, *spec.outputs))
