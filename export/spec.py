"""I/O specs: names, dtypes and min/opt/max shapes, declared once per component.

One :class:`ComponentSpec` feeds the ONNX export (input/output names, dynamic axes, example inputs), the
manifest the runtime trusts, and TensorRT optimization profiles. The records themselves are the runtime's
torch-free manifest view (:mod:`edgeseg.runtime.manifest`); this module adds the torch half (example inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeseg.runtime.manifest import ComponentSpec as ManifestComponentSpec
from edgeseg.runtime.manifest import TensorSpec

DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


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
class ComponentSpec(ManifestComponentSpec):
    """The manifest's torch-free :class:`edgeseg.runtime.manifest.ComponentSpec` plus torch example inputs."""

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
