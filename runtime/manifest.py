"""The bundle manifest as typed, torch-free records: what export writes and the runtime reads, by name.

    spec = bundle.spec("unet_attn")
    spec.input("sample").max[0]          # the largest batch the component takes
    spec.output("attn").shape            # ("batch", 144, 77)
    spec.fp32_outputs                    # precision hints for FP16 / INT8 builds

A component entry of ``manifest.json`` is ``{"file", "sha256", "precision", "exporter", "inputs", "outputs",
"opset", "description", "precision_hints", ["engine"]}``; :class:`ComponentSpec` is its I/O part, the same class
(with example inputs added on top, in torch) that the export declares each component with
(``edgeseg.export.spec``), so the I/O is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backends import DEFAULT_BACKEND, manifest_backend


class ManifestError(ValueError):
    """A manifest entry that does not have the shape this runtime reads."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` holds ints (fixed) and strings (a named dynamic axis); ``min`` / ``opt`` /
    ``max`` are the concrete shapes of the optimization profile (inputs with dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    min: tuple[int, ...] = ()
    opt: tuple[int, ...] = ()
    max: tuple[int, ...] = ()

    @property
    def dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.min:
            d.update(min=list(self.min), opt=list(self.opt), max=list(self.max))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> "TensorSpec":
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("dtype"), str) \
                or not isinstance(d.get("shape"), list):
            raise ManifestError(f"{where}: a tensor entry needs 'name', 'dtype' and a 'shape' list; got {d!r:.120}")
        prof = {k: tuple(d.get(k) or ()) for k in ("min", "opt", "max")}
        return cls(d["name"], d["dtype"], tuple(d["shape"]), **prof)


@dataclass(frozen=True)
class ComponentSpec:
    """A component's I/O, declared once: inputs and outputs in graph order, opset and precision hints."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 17
    description: str = ""
    # Precision hints, read by ``edgeseg build`` from the manifest (no torch needed there):
    fp32_outputs: tuple[str, ...] = ()  # outputs computed by FP32 nodes in FP16 builds (attention maps)
    int8_exclude: tuple[str, ...] = ()  # node-name regexes kept FP32 in INT8 builds

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``; a clear error naming the inputs there are."""
        return self._find(self.inputs, name, "input")

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``; a clear error naming the outputs there are."""
        return self._find(self.outputs, name, "output")

    def _find(self, tensors: tuple[TensorSpec, ...], name: str, kind: str) -> TensorSpec:
        for t in tensors:
            if t.name == name:
                return t
        raise ManifestError(f"component {self.name!r} has no {kind} {name!r} (it has {[t.name for t in tensors]}); "
                            f"the bundle was exported by another version: re-export it")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs}

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "opset": self.opset, "description": self.description,
                "precision_hints": {"fp32_outputs": list(self.fp32_outputs), "int8_exclude": list(self.int8_exclude)}}

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "ComponentSpec":
        """The spec of a manifest component entry (extra keys such as file, sha256 and engine are ignored)."""
        where = f"component {name!r}"
        if not isinstance(d, dict) or not isinstance(d.get("inputs"), list) or not isinstance(d.get("outputs"), list):
            raise ManifestError(f"{where}: needs 'inputs' and 'outputs' lists; got {d!r:.120}")
        hints = d.get("precision_hints") or {}
        return cls(name, tuple(TensorSpec.from_dict(t, where) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t, where) for t in d["outputs"]), int(d.get("opset", 17)),
                   str(d.get("description", "")), tuple(hints.get("fp32_outputs", ())),
                   tuple(hints.get("int8_exclude", ())))


@dataclass(frozen=True)
class ComponentEntry:
    """One component of a bundle: its file, hash, precision and I/O spec (plus a TensorRT engine, if built)."""

    name: str
    file: str
    sha256: str
    spec: ComponentSpec
    precision: str = "fp32"
    exporter: str = ""
    engine: dict | None = None

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "ComponentEntry":
        if not isinstance(d, dict) or not isinstance(d.get("file"), str) or not isinstance(d.get("sha256"), str):
            raise ManifestError(f"component {name!r}: needs 'file' and 'sha256' strings; got {d!r:.120}")
        return cls(name, d["file"], d["sha256"], ComponentSpec.from_dict(name, d), str(d.get("precision", "fp32")),
                   str(d.get("exporter", "")), d.get("engine"))


@dataclass(frozen=True)
class Manifest:
    """The typed view of ``manifest.json``; ``raw`` keeps the whole document (method-specific sections)."""

    method: str
    components: dict[str, ComponentEntry]
    preprocessing: dict
    method_config: dict
    backend: str = DEFAULT_BACKEND  # a name of runtime.backends.BACKENDS ("tensorrt" in old manifests -> "trt")
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        comps = d.get("components")
        if not isinstance(d.get("method"), str) or not isinstance(comps, dict):
            raise ManifestError("the manifest needs a 'method' string and a 'components' object")
        return cls(d["method"], {n: ComponentEntry.from_dict(n, c) for n, c in comps.items()},
                   d.get("preprocessing") or {}, d.get("method_config") or {},
                   manifest_backend(d.get("backend", DEFAULT_BACKEND)), d)
