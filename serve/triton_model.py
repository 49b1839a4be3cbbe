"""The Triton Python-backend model of one bundle: ``edgeseg serve``'s models and the exported pipeline models.

Each model instance (``instance_group`` count) is its own Python process with its own predictor. Triton's
dynamic batcher hands ``execute`` a list of requests; they are decoded one by one (a bad one gets its own error
response: HTTP 400 / gRPC INVALID_ARGUMENT with the runtime's one-line message), and the good ones run as one
batch (:mod:`.handler`). The model's ``config.pbtxt`` parameters (strings) say what to load:

- ``edgeseg_kind``: ``segmentation`` or ``referring``; ``edgeseg_bundle``: the bundle folder (absolute, or
  relative to the model's version folder);
- ``edgeseg_components``: empty (run the components in-process with ONNX Runtime / TensorRT) or a JSON object
  component -> Triton model name (the exported pipeline: BLS calls, :mod:`.bls`);
- ``edgeseg_provider``, ``edgeseg_threads``, ``edgeseg_cache_dir`` (``default``, ``none`` or a folder),
  ``edgeseg_options`` (JSON predictor options, e.g. ``{"postprocess": false}``), ``edgeseg_max_pixels``,
  ``edgeseg_max_expressions``.

The model file Triton loads (``<model>/1/model.py``) is a shim that imports :class:`TritonPythonModel` from here.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from .handler import error_message, make_handler
from .protocol import DEFAULT_MAX_EXPRESSIONS, OUTPUTS, decode

pb_utils: Any = None  # triton_python_backend_utils, importable only inside Triton's Python backend


def _params(model_config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def build_predictor(params: dict[str, str], version_dir: Path, execute: Any = None) -> Any:
    """The predictor a model's parameters describe (``execute``: the BLS executor for exported pipelines)."""
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.predictors import load_predictor
    from edgeseg.runtime.refdiff import RefDiffPredictor

    path = Path(params["edgeseg_bundle"])
    path = path if path.is_absolute() else version_dir / path
    cache = params.get("edgeseg_cache_dir") or "default"
    options = json.loads(params.get("edgeseg_options") or "{}")
    components = params.get("edgeseg_components") or ""
    if components:
        from .bls import RemoteBundle

        bundle = RemoteBundle(path, json.loads(components), execute)
    else:
        threads = int(params["edgeseg_threads"]) if params.get("edgeseg_threads") else None
        bundle = Bundle(path, provider=params.get("edgeseg_provider") or None, threads=threads)
    kwargs = dict(options, cache_dir=None if cache == "none" else cache)
    if params["edgeseg_kind"] == "referring":
        return RefDiffPredictor(bundle, **kwargs)
    return load_predictor(bundle, **kwargs)


def warm_up(predictor: Any, kind: str) -> None:
    """Open every component's session and run the image stages once on a blank image (and load Ref-Diff's
    parser), so that the first request is not slow; no text goes through the text cache."""
    import numpy as np

    for name in predictor.bundle.view.components:
        predictor.bundle.session(name)
    if kind == "referring":
        from edgeseg.runtime.refer_text import parse_expression

        parse_expression("the red circle on the left", predictor.options["parser"])
    h, w = tuple(predictor.bundle.preprocessing.get("image_size", (96, 96)))
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), np.full_like(xx, 96)], -1)
    image[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (min(h, w) // 5) ** 2] = (220, 30, 30)  # a red disc
    try:
        predictor.encode(image.astype(np.uint8))
    except Exception as e:  # noqa: BLE001 - a warm-up problem must not keep the model from serving
        if pb_utils is not None:
            pb_utils.Logger.log_warn(f"edgeseg: warm-up encode failed ({type(e).__name__}: {e}); serving anyway")


class TritonPythonModel:
    """Triton's Python-backend interface: initialize / execute / finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        global pb_utils
        import triton_python_backend_utils as _pb  # provided by Triton's Python backend stub

        pb_utils = _pb
        config = json.loads(args["model_config"])
        self.params = _params(config)
        self.kind = self.params["edgeseg_kind"]
        self.outputs = [t.name for t in OUTPUTS[self.kind]]
        self.max_pixels = int(self.params["edgeseg_max_pixels"]) if self.params.get("edgeseg_max_pixels") else None
        self.max_expressions = int(self.params.get("edgeseg_max_expressions") or DEFAULT_MAX_EXPRESSIONS)
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        execute = None
        if self.params.get("edgeseg_components"):
            from .bls import triton_executor

            execute = triton_executor(pb_utils)
        try:
            predictor = build_predictor(self.params, version_dir, execute)
            if not self.params.get("edgeseg_components"):
                warm_up(predictor, self.kind)
        except Exception as e:  # noqa: BLE001 - a one-line reason in the server log, which edgeseg serve reports
            msg, _ = error_message(e)
            raise RuntimeError(f"EDGESEG-SERVE-ERROR: model {args['model_name']!r}: {msg}") from e
        self.handler = make_handler(predictor, self.kind, pb_utils.Logger.log_error)

    def _decode(self, request: Any) -> Any:
        inputs = {n: (t.as_numpy() if t is not None else None)
                  for n in ("image", "image_bytes", "labels", "expressions")
                  for t in [pb_utils.get_input_tensor_by_name(request, n)]}
        try:
            params = json.loads(request.parameters() or "{}")
        except ValueError:
            params = {}
        return decode(self.kind, inputs, params, self.max_pixels, self.max_expressions)

    def _respond(self, request: Any, outcome: Any) -> Any:
        if isinstance(outcome, Exception):
            msg, users = error_message(outcome)
            code = pb_utils.TritonError.INVALID_ARG if users else pb_utils.TritonError.INTERNAL
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(msg, code))
        asked = set(request.requested_output_names()) or set(outcome)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, outcome[n]) for n in self.outputs
                                                          if n in outcome and n in asked])

    def execute(self, requests: list[Any]) -> list[Any]:
        decoded: list[Any] = []
        for r in requests:
            try:
                decoded.append(self._decode(r))
            except Exception as e:  # noqa: BLE001 - RequestError or the runtime's ValueError: this request only
                if not error_message(e)[1]:
                    pb_utils.Logger.log_error(traceback.format_exc())
                decoded.append(e)
        good = [d for d in decoded if not isinstance(d, Exception)]
        answers = iter(self.handler.run(good) if good else [])
        return [self._respond(r, d if isinstance(d, Exception) else next(answers)) for r, d in zip(requests, decoded)]

    def finalize(self) -> None:
        self.handler = None
