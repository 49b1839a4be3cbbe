"""Serving edgeseg bundles on Triton Inference Server (KServe v2 over HTTP / gRPC), torch-free.

- ``edgeseg serve BUNDLE ...`` (:mod:`.app`): one Triton Python-backend model per bundle, the runtime predictor in
  each model instance, Triton's dynamic batcher feeding batched encoder runs; tensors in :mod:`.protocol`.
- ``edgeseg triton-repo BUNDLE ... --out DIR`` (:mod:`.repository`): a model repository for the standard Triton
  container: one ``onnxruntime_onnx`` / ``tensorrt_plan`` model per component (config from the manifest's I/O
  spec, :mod:`.config`) and one Python-backend BLS pipeline per bundle (:mod:`.bls`).
- :mod:`.client`: request / response helpers over ``tritonclient``; :mod:`.loadtest`: the load test.

Imports numpy, the runtime and (lazily) ``tritonclient`` / the ``nvidia-pytriton`` server files; never torch,
train or export. Install: ``pip install 'edgeseg[serve]'``. The names below are imported on first use, so that
``import edgeseg.serve.protocol`` (the CLI's parser, the Triton model) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"serving": "app", "Batching": "config", "INPUTS": "protocol", "OUTPUTS": "protocol",
          "RequestError": "protocol", "ModelOptions": "repository", "export_repository": "repository",
          "Ports": "server", "ServeError": "server", "TritonServer": "server"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
