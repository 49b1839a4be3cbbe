"""Triton ``config.pbtxt`` files, generated from the serving protocol (pipeline models) and from a bundle
manifest's I/O spec (component models), written in protobuf text format and checked against Triton's own
model-config schema where ``tritonclient`` is installed (:func:`validate`).

    text = to_pbtxt(pipeline_config("lseg_toy", "segmentation", Batching(8, 2000), instances=2, parameters={...}))
    validate(text)          # tritonclient.grpc.model_config_pb2.ModelConfig, or a ConfigError naming the field

Component models: a spec whose inputs and outputs all start with one named dynamic axis (``batch``) becomes a
batching model (``max_batch_size`` = the smallest ``max`` of that axis over the inputs, dims without it; e.g.
``clip_hard``: ``crops`` x 3 x height x width in, ``crops`` x D out -> ``max_batch_size: 4``, dims ``[3, -1, -1]``,
requests of one crop size batched together); any other (the heads' ``labels`` axis, SAM's prompts,
``clip_masked``) has ``max_batch_size: 0`` and full dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edgeseg.runtime.manifest import ComponentSpec

from .protocol import INPUTS, OUTPUTS

# numpy dtype names of the manifest -> Triton data types
DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "int8": "INT8", "uint8": "UINT8",
          "bool": "BOOL", "float64": "FP64"}


class ConfigError(ValueError):
    """A generated config.pbtxt that Triton's schema refuses (a bug in the generator), or a spec it cannot map."""


class Enum(str):
    """A protobuf enum value (written unquoted)."""


@dataclass(frozen=True)
class Batching:
    """``max_batch`` items per model execution; ``delay_us`` the dynamic batcher's max queue delay (None: no
    dynamic batcher, each request runs alone)."""

    max_batch: int = 8
    delay_us: int | None = 2000


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def to_pbtxt(config: Mapping[str, Any], indent: int = 0) -> str:
    """A nested dict -> protobuf text format. Lists of dicts are repeated messages, lists of scalars packed
    lists (``dims: [ -1, 3 ]``), dicts messages; :class:`Enum` values are unquoted."""
    pad, lines = "  " * indent, []
    for key, v in config.items():
        if isinstance(v, Mapping):
            lines += [f"{pad}{key} {{", to_pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            for x in v:
                lines += [f"{pad}{key} {{", to_pbtxt(x, indent + 1), f"{pad}}}"]
        elif isinstance(v, (list, tuple)):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(x for x in lines if x)


def validate(text: str) -> Any:
    """Parse ``text`` with Triton's ModelConfig protobuf (shipped by ``tritonclient[grpc]``); return the message
    or raise :class:`ConfigError`. ImportError (with the install hint) without tritonclient."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ImportError(f"checking a config.pbtxt needs tritonclient ({e}): pip install 'edgeseg[serve]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"generated config.pbtxt does not parse as Triton's ModelConfig: {e}") from None


def _tensor(name: str, dtype: str, dims: tuple[int, ...] | list[int], optional: bool = False) -> dict:
    triton = "STRING" if dtype == "BYTES" else dtype  # the KServe v2 BYTES type is TYPE_STRING in the config
    d: dict[str, Any] = {"name": name, "data_type": Enum(f"TYPE_{triton}"), "dims": list(dims) or [1]}
    if not list(dims):  # a [batch] tensor: one value per item, reshaped to a scalar for the model
        d["reshape"] = {"shape": []}
    if optional:
        d["optional"] = True
    return d


def _batching(config: dict, b: Batching) -> None:
    config["max_batch_size"] = b.max_batch
    if b.delay_us is not None and b.max_batch > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(b.delay_us)}


def parameters(values: Mapping[str, str]) -> list[dict]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def pipeline_config(name: str, kind: str, batching: Batching, instances: int = 1,
                    params: Mapping[str, str] | None = None) -> dict:
    """The Python-backend model of one bundle (``edgeseg serve``'s model, or the exported BLS pipeline)."""
    if batching.max_batch < 1:
        raise ConfigError(f"max batch {batching.max_batch}: the pipeline models batch, give --max-batch >= 1")
    config: dict[str, Any] = {"name": name, "backend": "python"}
    _batching(config, batching)
    config["input"] = [_tensor(t.name, t.dtype, t.dims, t.optional) for t in INPUTS[kind]]
    config["output"] = [_tensor(t.name, t.dtype, t.dims) for t in OUTPUTS[kind]]
    config["instance_group"] = [{"count": int(instances), "kind": Enum("KIND_CPU")}]
    if params:
        config["parameters"] = parameters(params)
    return config


def batch_axis(spec: ComponentSpec) -> int:
    """The largest batch a component takes through a shared leading dynamic axis, or 0 (no batch axis)."""
    tensors = spec.inputs + spec.outputs
    first = {t.shape[0] if t.shape else None for t in tensors}
    if len(first) != 1 or not isinstance(next(iter(first)), str):
        return 0
    return min((t.max[0] for t in spec.inputs if t.max), default=0)


def component_config(name: str, spec: ComponentSpec, platform: str, batching: Batching, instances: int = 1,
                     device: str = "gpu", trt_accelerator: str | None = None) -> dict:
    """A component model from the manifest's I/O spec: ``platform`` onnxruntime_onnx or tensorrt_plan;
    ``device`` gpu / cpu (instance kind); ``trt_accelerator`` fp16 / fp32 turns on ONNX Runtime's TensorRT
    execution provider inside the onnxruntime backend (GPU only)."""
    config: dict[str, Any] = {"name": name, "platform": platform}
    most = batch_axis(spec)
    skip = 1 if most else 0
    config["max_batch_size"] = most
    if most:
        _batching(config, Batching(most, batching.delay_us))
    for key, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        items = []
        for t in tensors:
            if t.dtype not in DTYPES:
                raise ConfigError(f"component {spec.name!r} {key} {t.name!r} has dtype {t.dtype}, which has no Triton "
                                  f"type here; known: {sorted(DTYPES)}")
            items.append(_tensor(t.name, DTYPES[t.dtype], [d if isinstance(d, int) else -1 for d in t.shape[skip:]]))
        config[key] = items
    config["instance_group"] = [{"count": int(instances), "kind": Enum("KIND_GPU" if device == "gpu" else "KIND_CPU")}]
    if trt_accelerator and platform == "onnxruntime_onnx":
        if device != "gpu":
            raise ConfigError("the TensorRT accelerator runs on GPU instances only: drop --trt-accelerator or use "
                              "--device gpu")
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": "precision_mode", "value": trt_accelerator.upper()},
                                                {"key": "max_workspace_size_bytes", "value": str(1 << 30)}]}]}}
    return config


def as_python_backend(config: dict) -> dict:
    """A component config served by :class:`.bls.OrtComponentModel` (ONNX Runtime in the Python backend, CPU)."""
    out = {"name": config["name"], "backend": "python"}
    out.update({k: v for k, v in config.items() if k not in ("name", "platform", "optimization", "instance_group")})
    out["instance_group"] = [{"count": config["instance_group"][0]["count"], "kind": Enum("KIND_CPU")}]
    return out
