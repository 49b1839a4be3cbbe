"""The exported pipeline model's view of a bundle: its components run as other Triton models (BLS calls).

In a model repository written by ``edgeseg triton-repo`` each component is its own Triton model
(``onnxruntime_onnx`` or ``tensorrt_plan``) and the pipeline model keeps only the bundle's manifest and
tokenizers. :class:`RemoteBundle` is a :class:`~edgeseg.runtime.Bundle` of that folder whose sessions are
:class:`BlsSession` s, so the runtime's own predictors (LSeg, TCL, IFSeg, Ref-Diff) run unchanged on top of it:

    execute = triton_executor(pb_utils)                      # inside Triton's Python backend
    bundle = RemoteBundle(".../lseg_toy/1/bundle", {"lseg_encoder": "lseg_toy.lseg_encoder", ...}, execute)
    pred = load_predictor(bundle)                            # bundle.run(...) -> one BLS request per call

``execute(model_name, feeds, output_names) -> outputs`` is the only Triton-specific part (tests pass one that
runs the repository's ONNX files with onnxruntime). :class:`OrtComponentModel` serves one component with
ONNX Runtime inside the Python backend (``--component-backend python``), for servers without Triton's
onnxruntime backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgeseg.runtime.bundle import Bundle, BundleError
from edgeseg.runtime.manifest import ComponentSpec, tokenizer_keys
from edgeseg.runtime.session import DeviceIOUnsupported

Executor = Callable[[str, Mapping[str, np.ndarray], list[str]], dict[str, np.ndarray]]


class BlsSession:
    """A component served by another Triton model: ``run(feeds)`` is one BLS inference request (the
    :class:`~edgeseg.runtime.session.Session` protocol)."""

    supports_device_io = False

    def __init__(self, spec: ComponentSpec, model: str, execute: Executor):
        from .config import batch_axis

        self.spec, self.model, self._execute = spec, model, execute
        self.provider = f"triton:{model}"
        # a [batch] tensor of a batching model is [batch, 1] for Triton (dims [1], reshape to a scalar)
        self._column = {t.name for t in spec.inputs + spec.outputs if len(t.shape) == 1} if batch_axis(spec) else set()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sent = {t.name: feeds[t.name].reshape(-1, 1) if t.name in self._column else feeds[t.name]
                for t in self.spec.inputs}
        out = self._execute(self.model, sent, self.spec.output_names)
        missing = [n for n in self.spec.output_names if n not in out]
        if missing:
            raise BundleError(f"Triton model {self.model!r} returned no output {missing}; its config.pbtxt does not "
                              f"match the bundle: rewrite the repository with edgeseg triton-repo")
        return {n: out[n].reshape(-1) if n in self._column else out[n] for n in self.spec.output_names}

    def device_io(self) -> Any:
        raise DeviceIOUnsupported(f"component served by Triton model {self.model!r} keeps its I/O in Triton")


class RemoteBundle(Bundle):
    """A bundle folder holding the manifest and tokenizers only; ``models``: component -> Triton model name.
    The tokenizer files are checked against their sha256 as in any bundle; the component files live in the
    component models (Triton checks those when it loads them)."""

    def __init__(self, path: str | Path, models: Mapping[str, str], execute: Executor):
        self._models, self._execute = dict(models), execute
        super().__init__(path)
        missing = sorted(set(self.view.components) - set(self._models))
        if missing:
            raise BundleError(f"{self.path}: no Triton model named for component(s) {missing}; rewrite the "
                              f"repository with edgeseg triton-repo")

    def _check_files(self, check_hashes: bool) -> None:
        checked: set[tuple[str, str]] = set()
        for key in tokenizer_keys(self.manifest):
            tok = self.manifest[key]
            if (tok["file"], tok["sha256"]) not in checked:
                self._check_file(self.file(tok["file"], f"{key}.file"), tok["sha256"], f"tokenizer {key!r}",
                                 check_hashes)
                checked.add((tok["file"], tok["sha256"]))

    def session(self, name: str) -> BlsSession:  # type: ignore[override]
        if name not in self._sessions:
            with self._lock:
                if name not in self._sessions:
                    self._sessions[name] = BlsSession(self.spec(name), self._models[name], self._execute)
        return self._sessions[name]  # type: ignore[return-value]


def triton_executor(pb_utils: Any) -> Executor:
    """BLS through Triton's Python backend module (``triton_python_backend_utils``)."""

    def execute(model: str, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v))
                                                    for k, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"Triton model {model!r} failed: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs}

    return execute


class OrtComponentModel:
    """A component model run by ONNX Runtime inside Triton's *Python* backend (``edgeseg triton-repo
    --component-backend python``): the exported repository on a server without Triton's onnxruntime backend, such
    as PyPI's nvidia-pytriton. Each request runs on its own; I/O as in ``config.pbtxt``."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb, out = self.pb, []
        for r in requests:
            try:
                feeds = {n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                values = self.session.run(self.outputs, feeds)
                out.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in zip(self.outputs, values)]))
            except Exception as e:  # noqa: BLE001 - answer this request with the error, keep serving
                out.append(pb.InferenceResponse(error=pb.TritonError(f"{type(e).__name__}: {e}")))
        return out
