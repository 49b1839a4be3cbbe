"""The bundle manifest as typed, torch-free records: what export writes and the runtime reads, by name.

    spec = bundle.spec("unet_attn")
    spec.input("sample").max[0]          # the largest batch the component takes
    spec.output("attn").shape            # ("batch", 144, 77)
    spec.fp32_outputs                    # precision hints for FP16 / INT8 builds

A component entry of ``manifest.json`` is ``{"file", "sha256", "precision", "exporter", "inputs", "outputs",
"opset", "description", "precision_hints", ["external_data"], ["engine"]}``; :class:`ComponentSpec` is its I/O
part, the same class (with example inputs added on top, in torch) that the export declares each component with
(``edgeseg.export.spec``), so the I/O is declared once. ``external_data``: ``[{"file", "sha256"}]``, the weight
file(s) of a graph saved with ONNX external data (``<component>.onnx.data``).

:meth:`Manifest.from_dict` checks every number the runtime reads (shapes and min/opt/max profiles, image
preprocessing, tokenizer facts, the ``method_config`` sections of :mod:`.manifest_checks`) and every file name
(a plain name inside the bundle folder), and raises :class:`ManifestError` naming the field.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any

from .backends import DEFAULT_BACKEND, manifest_backend
from .integrity import check_name
from .manifest_checks import (ManifestError, check_method_config, check_preprocessing, check_tokenizer, integer,
                              section, sha256_text)

__all__ = ["ComponentEntry", "ComponentSpec", "ExternalFile", "Manifest", "ManifestError", "TensorSpec",
           "TOKENIZER_TEXT_COMPONENTS", "tokenizer_keys"]

# Tokenizer entries and the text component whose ``input_ids`` length must equal their context length.
TOKENIZER_TEXT_COMPONENTS = {"tokenizer": "clip_text", "sd_tokenizer": "sd_text"}


def tokenizer_keys(d: dict) -> list[str]:
    """The manifest keys holding tokenizer entries: ``tokenizer`` and every ``*_tokenizer`` (Ref-Diff's SD one)."""
    return [k for k in d if k == "tokenizer" or k.endswith("_tokenizer")]


def _file_name(v: Any, where: str) -> str:
    try:
        return check_name(v, where)
    except ValueError as e:
        raise ManifestError(str(e)) from None


def derived_axis(name: str, axes: set[str]) -> bool:
    """Whether an output's dynamic axis ``name`` follows the input axes ``axes``: one of them, or a product /
    quotient of them and positive integers with ``*`` and ``/`` (e.g. ``height/8``, ``height/4*width/4``), at
    least one an input axis."""
    parts = re.split(r"[*/]", name)
    return (any(p in axes for p in parts) and all(p in axes or (p.isdigit() and int(p) > 0) for p in parts))


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
    def from_dict(cls, d: Any, where: str = "", profiled: bool = False) -> "TensorSpec":
        """``where``: the entry's field path (``components.lseg_head.inputs[1]``), named by every error;
        ``profiled``: an input, whose dynamic axes need a min/opt/max profile."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("dtype"), str) \
                or not isinstance(d.get("shape"), list):
            raise ManifestError(f"{where}: a tensor entry needs 'name', 'dtype' and a 'shape' list; got {d!r:.120}")
        shape = tuple(d["shape"])
        for i, dim in enumerate(shape):
            if not (isinstance(dim, str) and dim):
                integer(dim, f"{where}.shape[{i}]")
        prof: dict[str, tuple[int, ...]] = {}
        dynamic = any(isinstance(x, str) for x in shape)
        if any(d.get(k) is not None for k in ("min", "opt", "max")) or (profiled and dynamic):
            for k in ("min", "opt", "max"):
                v = d.get(k)
                if not isinstance(v, list) or len(v) != len(shape):
                    raise ManifestError(f"{where}.{k} = {v!r:.80}: must be a list of {len(shape)} ints (one per "
                                        f"axis of shape {list(shape)})")
                prof[k] = tuple(integer(x, f"{where}.{k}[{i}]") for i, x in enumerate(v))
            for i, dim in enumerate(shape):
                lo, opt, hi = prof["min"][i], prof["opt"][i], prof["max"][i]
                if not lo <= opt <= hi:
                    raise ManifestError(f"{where}: axis {i} has min {lo}, opt {opt}, max {hi}: must be "
                                        f"min <= opt <= max")
                if isinstance(dim, int) and not lo == hi == dim:
                    raise ManifestError(f"{where}: axis {i} is fixed at {dim} but its min/max are {lo}/{hi}")
        return cls(d["name"], d["dtype"], shape, **prof)


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
        where = f"components.{name}"
        if not isinstance(d, dict) or not isinstance(d.get("inputs"), list) or not isinstance(d.get("outputs"), list):
            raise ManifestError(f"{where}: needs 'inputs' and 'outputs' lists; got {d!r:.120}")
        hints = section(d.get("precision_hints") or {}, f"{where}.precision_hints")
        opset = integer(d.get("opset", 17), f"{where}.opset", 1, 1000)
        inputs = tuple(TensorSpec.from_dict(t, f"{where}.inputs[{i}]", True) for i, t in enumerate(d["inputs"]))
        outputs = tuple(TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(d["outputs"]))
        axes = {x for t in inputs for x in t.shape if isinstance(x, str)}
        for i, t in enumerate(outputs):  # an output's dynamic axes follow the inputs' (batch, labels, prompts...)
            for j, x in enumerate(t.shape):
                if isinstance(x, str) and not derived_axis(x, axes):
                    raise ManifestError(f"{where}.outputs[{i}].shape[{j}] = {x!r}: not a dynamic axis of the inputs "
                                        f"{sorted(axes)}; a fixed dim must be a positive integer")
        return cls(name, inputs, outputs, opset, str(d.get("description", "")), tuple(hints.get("fp32_outputs", ())),
                   tuple(hints.get("int8_exclude", ())))


@dataclass(frozen=True)
class ExternalFile:
    """A file a component needs besides its ONNX graph (ONNX external data), with its sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class ComponentEntry:
    """One component of a bundle: its file, hash, precision and I/O spec (plus external-data files and a TensorRT
    engine, if any)."""

    name: str
    file: str
    sha256: str
    spec: ComponentSpec
    precision: str = "fp32"
    exporter: str = ""
    engine: dict | None = None
    external_data: tuple[ExternalFile, ...] = ()

    @classmethod
    def from_dict(cls, name: str, d: Any) -> "ComponentEntry":
        where = f"components.{name}"
        if not isinstance(d, dict) or not isinstance(d.get("file"), str) or not isinstance(d.get("sha256"), str):
            raise ManifestError(f"component {name!r}: needs 'file' and 'sha256' strings; got {d!r:.120}")
        _file_name(d["file"], f"{where}.file")
        ext = d.get("external_data") or []
        if not isinstance(ext, list):
            raise ManifestError(f"{where}.external_data = {ext!r:.80}: must be a list of {{file, sha256}} objects")
        files = []
        for i, e in enumerate(ext):
            if not isinstance(e, dict):
                raise ManifestError(f"{where}.external_data[{i}] = {e!r:.80}: must be a {{file, sha256}} object")
            files.append(ExternalFile(_file_name(e.get("file"), f"{where}.external_data[{i}].file"),
                                      sha256_text(e.get("sha256"), f"{where}.external_data[{i}].sha256")))
        engine = d.get("engine")
        if engine is not None:
            if not isinstance(engine, dict) or not isinstance(engine.get("sha256"), str):
                raise ManifestError(f"{where}.engine = {engine!r:.80}: must be an object with 'file' and 'sha256'")
            _file_name(engine.get("file"), f"{where}.engine.file")
        return cls(name, d["file"], d["sha256"], ComponentSpec.from_dict(name, d), str(d.get("precision", "fp32")),
                   str(d.get("exporter", "")), engine, tuple(files))


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
    def from_dict(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError(f"the manifest must be a JSON object, got {type(d).__name__} {d!r:.60}")
        comps = d.get("components")
        if not isinstance(d.get("method"), str) or not isinstance(comps, dict) or not comps:
            raise ManifestError("the manifest needs a 'method' string and a non-empty 'components' object")
        for n in comps:
            _file_name(n, f"components.{n}")  # component names make file names (<name>.onnx) in builds
        for key in ("preprocessing", "tokenizer"):
            if key not in d:
                raise ManifestError(f"the manifest lacks {key!r}")
        prep = check_preprocessing(d["preprocessing"], "preprocessing")
        config = check_method_config(d.get("method_config") or {}, d["method"], d)
        entries = {n: ComponentEntry.from_dict(n, c) for n, c in comps.items()}
        for key in tokenizer_keys(d):
            _file_name(key, f"tokenizer entry {key!r}")  # builds write it as <key>.json
            tok = check_tokenizer(d[key], key)
            text = entries.get(TOKENIZER_TEXT_COMPONENTS.get(key, ""))
            ids = [t for t in text.spec.inputs if t.name == "input_ids"] if text else []
            if ids and len(ids[0].shape) == 2 and ids[0].shape[1] != tok["context_length"]:
                raise ManifestError(f"{key}.context_length = {tok['context_length']}: component {text.name!r} "
                                    f"takes input_ids of length {ids[0].shape[1]}")
        backend = d.get("backend", DEFAULT_BACKEND)
        if not isinstance(backend, str):
            raise ManifestError(f"backend = {backend!r:.60}: must be a backend name string")
        return cls(d["method"], entries, prep, config, manifest_backend(backend), d)
