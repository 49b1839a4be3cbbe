"""The one backend vocabulary of edgeseg: the names ``edgeseg build --backend``, ``Bundle(provider=...)``,
``--provider``, the manifest's ``"backend"`` and the bench (``<backend>-<precision>``, e.g. ``ort-trt-fp16``) use.

    ort-cpu    ONNX Runtime, CPU execution provider (the ONNX graphs as exported or built)
    ort-cuda   ONNX Runtime, CUDA execution provider
    ort-trt    ONNX Runtime, TensorRT execution provider (ORT builds and caches the engines itself)
    trt        native TensorRT engines built by ``edgeseg build --backend trt`` (tensorrt + cuda-python)

A bundle is *built for* one backend (``manifest["backend"]``) and runs on it by default; ``provider=`` picks
another one explicitly, never silently. Old spellings still work and warn (:class:`BackendNameWarning`, a
``FutureWarning`` so that command-line users see it): as runtime providers ``cpu`` -> ``ort-cpu``, ``cuda`` ->
``ort-cuda``, ``tensorrt`` -> ``ort-trt``; as a build backend ``tensorrt`` -> ``trt``. Manifests written with
``"backend": "tensorrt"`` (native engines) read as ``trt`` without a warning: the file is data, not a request.

Adding a backend: one :class:`BackendInfo` entry in :data:`BACKENDS`, one :class:`~.session.Session`
implementation and its branch in :func:`.session.open_session` (``/work/helper-notes/backend.md``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

Role = Literal["provider", "build"]  # a runtime provider request, or a build backend request


class BackendNameWarning(FutureWarning):
    """An old backend / provider spelling was used; the message names the new one."""


class UnknownBackendError(ValueError):
    """A backend or provider name outside :data:`BACKENDS` (and its old spellings)."""


@dataclass(frozen=True)
class BackendInfo:
    """One backend. ``session``: the :class:`~.session.Session` implementation that runs it (``"ort"``:
    :class:`~.session.OrtSession`, ``"trt"``: :class:`~.trt_backend.TrtEngine`); ``ort_provider``: the ONNX
    Runtime execution provider (None for native engines); ``tensorrt``: its graphs must pass the TensorRT lint;
    ``engines``: the bundle carries prebuilt engines (``edgeseg build`` makes them)."""

    name: str
    description: str
    session: str
    device: str  # "cpu" | "cuda"
    ort_provider: str | None = None
    tensorrt: bool = False
    engines: bool = False


BACKENDS: dict[str, BackendInfo] = {b.name: b for b in (
    BackendInfo("ort-cpu", "ONNX Runtime, CPU execution provider", "ort", "cpu", "CPUExecutionProvider"),
    BackendInfo("ort-cuda", "ONNX Runtime, CUDA execution provider", "ort", "cuda", "CUDAExecutionProvider"),
    BackendInfo("ort-trt", "ONNX Runtime, TensorRT execution provider (engines built and cached by ONNX Runtime)",
                "ort", "cuda", "TensorrtExecutionProvider", tensorrt=True),
    BackendInfo("trt", "native TensorRT engines (tensorrt + cuda-python, no ONNX Runtime)", "trt", "cuda",
                tensorrt=True, engines=True),
)}
DEFAULT_BACKEND = "ort-cpu"  # what plain exports are built for

# Old spellings -> new names. "tensorrt" meant ORT's TensorRT EP as a provider, native engines as a backend.
PROVIDER_ALIASES: dict[str, str] = {"cpu": "ort-cpu", "cuda": "ort-cuda", "tensorrt": "ort-trt"}
BUILD_ALIASES: dict[str, str] = {"tensorrt": "trt"}
_ALIASES: dict[str, dict[str, str]] = {"provider": PROVIDER_ALIASES, "build": BUILD_ALIASES}

# argparse choices: the new names first, then the old spellings (accepted, with a warning).
PROVIDER_CHOICES: list[str] = [*BACKENDS, *PROVIDER_ALIASES]
BUILD_CHOICES: list[str] = [*BACKENDS, *BUILD_ALIASES]


def describe() -> str:
    """One line per backend: ``ort-cpu: ONNX Runtime, CPU execution provider; ...`` (help texts, errors)."""
    return "; ".join(f"{b.name}: {b.description}" for b in BACKENDS.values())


def resolve_backend(name: str, role: Role = "provider", stacklevel: int = 2) -> str:
    """The canonical backend name for ``name``: a new name as it is, an old spelling mapped with a
    :class:`BackendNameWarning` naming the new one (``role`` says which old vocabulary applies: ``"provider"``
    for ``Bundle(provider=)`` / ``--provider``, ``"build"`` for ``edgeseg build --backend``).

    Raises :class:`UnknownBackendError` (one line, listing the names) for anything else."""
    if name in BACKENDS:
        return name
    what, flag = ("provider", "--provider") if role == "provider" else ("backend", "--backend")
    new = _ALIASES[role].get(name)
    if new is not None:
        warnings.warn(f"{what} name {name!r} is deprecated, use {new!r} ({flag} {new}: {BACKENDS[new].description})",
                      BackendNameWarning, stacklevel=stacklevel + 1)
        return new
    raise UnknownBackendError(f"unknown {what} {name!r}; choose one of {list(BACKENDS)} ({describe()})")


def manifest_backend(name: str) -> str:
    """The backend a stored manifest names, old build spellings mapped silently (``tensorrt`` -> ``trt``);
    an unknown name is returned unchanged for the caller to refuse with the bundle's own rebuild hint."""
    return BUILD_ALIASES.get(name, name)


def backend_info(name: str) -> BackendInfo:
    """The :class:`BackendInfo` of a canonical name (:func:`resolve_backend` first for user input)."""
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of {list(BACKENDS)} ({describe()})")
    return BACKENDS[name]
