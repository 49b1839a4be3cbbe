"""I/O specs: names, dtypes and min/opt/max shapes, declared once per component.

One :class:`ComponentSpec` feeds the ONNX export (input/output names, dynamic axes, example inputs), the
manifest the runtime trusts, and TensorRT optimization profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints are fixed; strings name a dynamic axis
    min: tuple[int, ...] = ()
    opt: tuple[int, ...] = ()
    max: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.min:
            d.update(min=list(self.min), opt=list(self.opt), max=list(self.max))
        return d


def dynamic_input(axis: str, name: str, dims: tuple[int, ...], max_n: int, opt_n: int = 1,
                  dtype: str = "float32") -> TensorSpec:
    """An input whose first axis ``axis`` ("batch", "labels") is dynamic in [1, max_n] (opt ``opt_n``) and whose
    other dims are fixed."""
    dims = tuple(dims)
    return TensorSpec(name, dtype, (axis, *dims), (1, *dims), (opt_n, *dims), (max_n, *dims))


def image_input(image_size: tuple[int, int], max_batch: int) -> TensorSpec:
    """``image`` B x 3 x H x W float32 (normalized RGB), B in [1, max_batch]."""
    return dynamic_input("batch", "image", (3, *image_size), max_batch)


def text_embeds_input(embed_dim: int, max_labels: int) -> TensorSpec:
    """``text_embeds`` C x D float32 (unit norm), C labels in [1, max_labels], 16 for the profile's opt."""
    return dynamic_input("labels", "text_embeds", (embed_dim,), max_labels, opt_n=16)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 17
    description: str = ""
    # Precision hints, read by ``edgeseg build`` from the manifest (no torch needed there):
    fp32_outputs: tuple[str, ...] = ()  # outputs computed by FP32 nodes in FP16 builds (attention maps)
    int8_exclude: tuple[str, ...] = ()  # node-name regexes kept FP32 in INT8 builds

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in self.inputs + self.outputs}

    def example_inputs(self, which: str = "opt", generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs at the min/opt/max shapes (int64 inputs: ids in [1, 1000))."""
        out = []
        for t in self.inputs:
            shape = getattr(t, which)
            if t.dtype == "int64":
                out.append(torch.randint(1, 1000, shape, generator=generator))
            else:
                out.append(torch.randn(shape, generator=generator, dtype=DTYPES[t.dtype]))
        return tuple(out)

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "opset": self.opset, "description": self.description,
                "precision_hints": {"fp32_outputs": list(self.fp32_outputs), "int8_exclude": list(self.int8_exclude)}}
