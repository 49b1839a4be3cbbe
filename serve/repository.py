"""Triton model repositories: the one ``edgeseg serve`` runs (one Python-backend model per bundle, components
in-process) and the one ``edgeseg triton-repo`` writes for the standard Triton container:

    out/
      lseg_toy/config.pbtxt                 # pipeline (Python backend, BLS): the same tensors as edgeseg serve
      lseg_toy/1/model.py                   # shim -> edgeseg.serve.triton_model (needs edgeseg[runtime] installed)
      lseg_toy/1/bundle/manifest.json       # + tokenizer files: what the runtime predictor reads
      lseg_toy.lseg_encoder/config.pbtxt    # one model per component, from the manifest's I/O spec
      lseg_toy.lseg_encoder/1/model.onnx    # (model.plan for TensorRT engine bundles)
      ...

Torch-free: it reads bundles only. Every config.pbtxt is checked against Triton's ModelConfig schema when
``tritonclient`` is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeseg.runtime.bundle import MANIFEST, Bundle
from edgeseg.runtime.fileio import atomic_write_bytes, staged_dir
from edgeseg.runtime.manifest import tokenizer_keys

from .config import Batching, as_python_backend, component_config, pipeline_config, to_pbtxt, validate
from .protocol import DEFAULT_MAX_EXPRESSIONS, RequestError, kind_of

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
COMPONENT_BACKENDS = ("onnxruntime", "python")


@dataclass(frozen=True)
class ServedBundle:
    """A checked bundle and the model name it is served under."""

    name: str
    path: Path
    method: str
    kind: str
    bundle: Bundle = field(repr=False, compare=False)


@dataclass(frozen=True)
class ModelOptions:
    """What each model instance builds its predictor with (``config.pbtxt`` parameters)."""

    provider: str | None = None
    threads: int | None = None
    cache_dir: str = "default"
    predictor: dict = field(default_factory=dict)  # e.g. {"postprocess": False}
    max_pixels: int | None = None
    max_expressions: int = DEFAULT_MAX_EXPRESSIONS


def resolve_bundles(paths: Sequence[str | Path], names: Sequence[str] | None = None,
                    provider: str | None = None) -> list[ServedBundle]:
    """Open (and check) each bundle; model name = ``names[i]`` or the folder's name; one-line errors."""
    from edgeseg.methods import METHODS

    if not paths:
        raise ValueError("give at least one bundle folder (edgeseg export ... --out engines/NAME)")
    names = list(names or [])
    if len(names) > len(paths):
        raise ValueError(f"{len(names)} --name values for {len(paths)} bundles; give at most one name per bundle")
    out: list[ServedBundle] = []
    for i, p in enumerate(paths):
        b = Bundle(p, provider=provider)
        name = names[i] if i < len(names) else Path(p).resolve().name
        if not NAME_RE.match(name):
            raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '.', '-' (and not start with "
                             f"'.' or '-'): pass --name")
        spec = METHODS.get(b.method)
        try:
            kind = kind_of(spec.kind if spec else "unknown", b.method)
        except RequestError as e:
            raise ValueError(f"bundle {p}: {e}") from None
        out.append(ServedBundle(name, Path(p).resolve(), b.method, kind, b))
    taken = [s.name for s in out]
    dup = sorted({n for n in taken if taken.count(n) > 1})
    if dup:
        raise ValueError(f"two bundles would be served as {dup}: give each its own --name")
    return out


def _write(path: Path, text: str, check: bool = True) -> None:
    if check and path.name == "config.pbtxt":
        try:
            validate(text)
        except ImportError:
            pass  # the tests parse every file; a user without tritonclient still gets the repository
    atomic_write_bytes(path, (text.rstrip() + "\n").encode())


def _shim(doc: str, lines: Sequence[str] = ()) -> str:
    return "\n".join([f'"""{doc}"""', *lines, "from edgeseg.serve.triton_model import TritonPythonModel  # noqa: F401",
                      ""])


def local_shim(expected: tuple[int, int, int] | None = None, path: str | None = None) -> str:
    """The model.py of ``edgeseg serve``: refuses a backend stub whose libpython is not this interpreter's (its
    stdlib would not match: the quirk of pyenv Pythons next to an older system libpython), then imports edgeseg
    from the serving interpreter's path."""
    v = expected or tuple(sys.version_info[:3])
    check = [
        "import sys",
        f"if tuple(sys.version_info[:3]) != {tuple(v)!r}:",
        "    _lib = [ln.split()[-1] for ln in open('/proc/self/maps') if 'libpython' in ln][:1]",
        "    raise RuntimeError('EDGESEG-SERVE-ERROR: Triton\\'s Python backend stub loaded libpython %s (%s) but "
        f"edgeseg serve runs Python {'.'.join(map(str, v))}: set LD_LIBRARY_PATH to the lib/ folder of the Python "
        "that runs edgeseg (or use a Python built with --enable-shared)' % (sys.version.split()[0], _lib))",
    ]
    if path:
        check.append(f"sys.path.insert(0, {path!r})")
    return _shim("Written by edgeseg serve: one bundle's Triton Python-backend model (edgeseg.serve.triton_model).",
                 check)


def _model_params(s: ServedBundle, o: ModelOptions, bundle: str, components: dict | None = None) -> dict[str, str]:
    p = {"edgeseg_kind": s.kind, "edgeseg_method": s.method, "edgeseg_bundle": bundle,
         "edgeseg_components": json.dumps(components) if components else "", "edgeseg_cache_dir": o.cache_dir,
         "edgeseg_options": json.dumps(o.predictor), "edgeseg_max_expressions": str(o.max_expressions)}
    for key, v in (("edgeseg_provider", o.provider), ("edgeseg_threads", o.threads),
                   ("edgeseg_max_pixels", o.max_pixels)):
        if v is not None:
            p[key] = str(v)
    return p


def write_serve_repository(served: Sequence[ServedBundle], root: Path, batching: Batching, instances: int,
                           options: ModelOptions) -> Path:
    """The repository of ``edgeseg serve`` under ``root`` (a fresh folder): configs + shims, bundles in place."""
    import edgeseg

    src = str(Path(edgeseg.__file__).parent.parent)  # the folder holding this edgeseg (editable install: src/)
    for s in served:
        d = root / s.name
        (d / "1").mkdir(parents=True, exist_ok=True)
        cfg = pipeline_config(s.name, s.kind, batching, instances, _model_params(s, options, str(s.path)))
        _write(d / "config.pbtxt", to_pbtxt(cfg))
        _write(d / "1" / "model.py", local_shim(path=src))
    return root


def _copy_bundle_files(b: Bundle, dest: Path) -> None:
    """manifest.json and the tokenizer files: what RemoteBundle reads."""
    dest.mkdir(parents=True)
    shutil.copy2(b.path / MANIFEST, dest / MANIFEST)
    for key in tokenizer_keys(b.manifest):
        name = b.manifest[key]["file"]
        if not (dest / name).exists():
            shutil.copy2(b.file(name), dest / name)


def export_repository(paths: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None,
                      batching: Batching = Batching(), instances: int = 1, device: str = "gpu",
                      trt_accelerator: str | None = None, component_backend: str = "onnxruntime",
                      options: ModelOptions | None = None) -> list[Path]:
    """Write the model repository for the standard Triton container; returns the config.pbtxt files written.
    ``component_backend``: ``onnxruntime`` (the container's backend) or ``python`` (ONNX Runtime inside the
    Python backend: runs on the PyPI nvidia-pytriton server, for tests)."""
    if component_backend not in COMPONENT_BACKENDS:
        raise ValueError(f"component backend {component_backend!r} is not one of {COMPONENT_BACKENDS}")
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device {device!r}: give gpu or cpu (the kind of the component model instances)")
    served = resolve_bundles(paths, names)
    options = options or ModelOptions()
    written: list[Path] = []
    out = Path(out)
    with staged_dir(out) as tmp:
        for s in served:
            b = s.bundle
            engines = b.view.backend == "trt"
            models = {c: f"{s.name}.{c}" for c in b.view.components}
            for comp, model in models.items():
                entry = b.entry(comp)
                mdir = tmp / model / "1"
                mdir.mkdir(parents=True)
                if engines:
                    shutil.copy2(b.file(entry.engine["file"]), mdir / "model.plan")
                    platform = "tensorrt_plan"
                else:
                    shutil.copy2(b.file(entry.file), mdir / "model.onnx")
                    for ext in entry.external_data:
                        shutil.copy2(b.file(ext.file), mdir / ext.file)
                    platform = "onnxruntime_onnx"
                cfg = component_config(model, b.spec(comp), platform, batching, instances, device,
                                       trt_accelerator)
                if component_backend == "python" and not engines:
                    cfg = as_python_backend(cfg)
                    _write(mdir / "model.py", "from edgeseg.serve.bls import OrtComponentModel as TritonPythonModel"
                                              "  # noqa: F401")
                _write(tmp / model / "config.pbtxt", to_pbtxt(cfg))
                written.append(out / model / "config.pbtxt")
            pdir = tmp / s.name / "1"
            pdir.mkdir(parents=True)
            _copy_bundle_files(b, pdir / "bundle")
            params = _model_params(s, options, "bundle", models)
            cfg = pipeline_config(s.name, s.kind, batching, instances, params)
            _write(tmp / s.name / "config.pbtxt", to_pbtxt(cfg))
            _write(pdir / "model.py", _shim(f"Written by edgeseg triton-repo: the pipeline of bundle {s.name} "
                                            f"({s.method}); needs edgeseg[runtime] in the server's Python."))
            written.append(out / s.name / "config.pbtxt")
    return written


def describe(written: Sequence[Path]) -> dict[str, Any]:
    """model name -> its config.pbtxt, for the CLI's summary."""
    return {p.parent.name: str(p) for p in written}
