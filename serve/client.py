"""Client helpers over ``tritonclient`` (HTTP or gRPC): build a request for a served bundle, read the answer.

    import tritonclient.http as httpclient
    from edgeseg.serve.client import segment, refer

    client = httpclient.InferenceServerClient("127.0.0.1:8000")
    out = segment(client, "lseg_toy", image, ["circle", "grass"])         # {"label_map": H x W, "scores": C, ...}
    out = refer(client, "refdiff_toy", image, ["the red circle"])         # {"masks": K x H x W, "scores", ...}

The same calls work with ``tritonclient.grpc.InferenceServerClient`` (``protocol`` is read from the client's
module). Images: H x W x 3 uint8 arrays (sent as ``image``) or encoded file bytes (sent as ``image_bytes``).
Errors come back as ``tritonclient.utils.InferenceServerException`` (``.status()`` "400" / INVALID_ARGUMENT,
``.message()`` the server's one-line reason).
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np


def _module(client: Any) -> Any:
    """tritonclient.http or tritonclient.grpc, whichever the client comes from."""
    name = type(client).__module__
    return importlib.import_module("tritonclient.grpc" if ".grpc" in name else "tritonclient.http")


def _input(mod: Any, name: str, array: np.ndarray, dtype: str) -> Any:
    t = mod.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def image_input(mod: Any, image: np.ndarray | bytes) -> Any:
    """``image`` UINT8 [1, H, W, 3] from an array, or ``image_bytes`` BYTES [1, 1] from encoded file bytes."""
    if isinstance(image, (bytes, bytearray)):
        return _input(mod, "image_bytes", np.array([[bytes(image)]], dtype=np.object_), "BYTES")
    arr = np.asarray(image)
    return _input(mod, "image", arr[None], "UINT8" if arr.dtype == np.uint8 else _dtype(arr))


def texts_input(mod: Any, name: str, texts: Sequence[str]) -> Any:
    """``labels`` / ``expressions`` BYTES [1, count], UTF-8."""
    arr = np.array([[t.encode("utf-8") for t in texts]], dtype=np.object_).reshape(1, len(texts))
    return _input(mod, name, arr, "BYTES")


def _dtype(arr: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(arr.dtype)


def _outputs(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for n in names:
        v = result.as_numpy(n)
        if v is not None:
            out[n] = v[0]
    return out


def segment(client: Any, model: str, image: np.ndarray | bytes, labels: Sequence[str],
            probabilities: bool = False, timeout_s: float | None = None) -> dict[str, np.ndarray]:
    """One image through a segmentation model -> label_map (H x W int32), scores (C float32) and, when
    ``probabilities``, probabilities (C x h x w float32)."""
    mod = _module(client)
    kwargs: dict[str, Any] = {"parameters": {"probabilities": True}} if probabilities else {}
    if timeout_s is not None and mod.__name__.endswith("grpc"):
        kwargs["client_timeout"] = timeout_s
    r = client.infer(model, [image_input(mod, image), texts_input(mod, "labels", labels)], **kwargs)
    return _outputs(r, ("label_map", "scores", "probabilities"))


def refer(client: Any, model: str, image: np.ndarray | bytes, expressions: Sequence[str],
          timeout_s: float | None = None) -> dict[str, Any]:
    """One image and K expressions through a Ref-Diff model -> masks (K x H x W bool), scores (K float32),
    target_words (K str)."""
    mod = _module(client)
    kwargs: dict[str, Any] = {}
    if timeout_s is not None and mod.__name__.endswith("grpc"):
        kwargs["client_timeout"] = timeout_s
    r = client.infer(model, [image_input(mod, image), texts_input(mod, "expressions", expressions)], **kwargs)
    out: dict[str, Any] = _outputs(r, ("masks", "scores", "target_words"))
    out["target_words"] = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in out["target_words"]]
    return out


def metric(text: str, name: str, model: str) -> float:
    """A counter of Triton's Prometheus text (``nv_inference_exec_count`` ...) for one model, summed over versions."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
