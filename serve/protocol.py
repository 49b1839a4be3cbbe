"""The tensors ``edgeseg serve`` and the exported pipeline models speak (KServe v2 / Triton), declared once, and
their decoding and encoding in numpy. No Triton import: the Triton model (:mod:`.triton_model`), the model
repository writer (:mod:`.config`) and the clients (:mod:`.client`) all read these tables.

Every model has ``max_batch_size`` > 0, so each tensor of a request has a leading batch axis n (1 for one image):

- segmentation (LSeg, TCL, IFSeg): inputs ``image`` UINT8 [n, H, W, 3] *or* ``image_bytes`` BYTES [n, 1] (an
  encoded PNG/JPEG/WebP file), and ``labels`` BYTES [n, C] (UTF-8); outputs ``label_map`` INT32 [n, H, W] (index
  into the labels), ``scores`` FP32 [n, C] (each label's share of the pixels) and, only when the request parameter
  ``probabilities`` is true, ``probabilities`` FP32 [n, C, h, w] at the model's resolution (Triton lists every
  output as requested when a client names none, so the parameter, not the output list, asks for it).
- referring (Ref-Diff): ``image`` / ``image_bytes`` and ``expressions`` BYTES [n, K]; outputs ``masks`` BOOL
  [n, K, H, W], ``scores`` FP32 [n, K] (the best proposal's total score s) and ``target_words`` BYTES [n, K].
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# A request asking for more expressions than this is refused (each one is a guided DDIM run through the UNet).
DEFAULT_MAX_EXPRESSIONS = 16
KINDS = ("segmentation", "referring")


class RequestError(ValueError):
    """A request the model cannot answer: its one-line message goes back as the error response (HTTP 400 /
    gRPC INVALID_ARGUMENT), and the server and the other requests carry on."""


@dataclass(frozen=True)
class TensorDef:
    """One model input or output: Triton data type, dims of one batch item (-1: any size)."""

    name: str
    dtype: str  # Triton's name without TYPE_: UINT8, BYTES, INT32, FP32, BOOL
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""


IMAGE = TensorDef("image", "UINT8", (-1, -1, 3), True, "H x W x 3 RGB pixels (or give image_bytes)")
IMAGE_BYTES = TensorDef("image_bytes", "BYTES", (1,), True, "one encoded PNG / JPEG / WebP file (or give image)")
INPUTS: dict[str, tuple[TensorDef, ...]] = {
    "segmentation": (IMAGE, IMAGE_BYTES, TensorDef("labels", "BYTES", (-1,), False, "C labels, UTF-8")),
    "referring": (IMAGE, IMAGE_BYTES, TensorDef("expressions", "BYTES", (-1,), False, "K referring expressions")),
}
OUTPUTS: dict[str, tuple[TensorDef, ...]] = {
    "segmentation": (TensorDef("label_map", "INT32", (-1, -1), doc="H x W index into the labels"),
                     TensorDef("scores", "FP32", (-1,), doc="C: each label's share of the pixels"),
                     TensorDef("probabilities", "FP32", (-1, -1, -1),
                               doc="C x h x w at the model's resolution; only with the parameter probabilities=true")),
    "referring": (TensorDef("masks", "BOOL", (-1, -1, -1), doc="K x H x W: the best proposal per expression"),
                  TensorDef("scores", "FP32", (-1,), doc="K: the best proposal's total score"),
                  TensorDef("target_words", "BYTES", (-1,), doc="K: the word each expression was read to name")),
}
TEXTS = {"segmentation": "labels", "referring": "expressions"}
NUMPY = {"UINT8": np.uint8, "INT32": np.int32, "FP32": np.float32, "BOOL": np.bool_, "BYTES": np.object_}


@dataclass(frozen=True)
class Item:
    """One image of a request: H x W x 3 uint8 pixels and its texts (labels or expressions)."""

    image: np.ndarray
    texts: list[str]


@dataclass(frozen=True)
class Request:
    """A decoded request: its n items and which optional outputs it wants."""

    items: list[Item]
    probabilities: bool = False


def kind_of(method_kind: str, method: str) -> str:
    """The serving kind of a registered method kind; a one-line refusal for the others (CLIP towers)."""
    if method_kind not in KINDS:
        raise RequestError(f"bundle method {method!r} is of kind {method_kind!r}, which edgeseg serve does not serve; "
                           f"serve a segmentation (lseg, tcl, ifseg) or referring (refdiff) bundle")
    return method_kind


def _texts(arr: np.ndarray, name: str, n: int) -> list[list[str]]:
    """BYTES [n, C] -> n lists of str (UTF-8)."""
    if arr.ndim != 2 or arr.shape[0] != n:
        raise RequestError(f"input {name!r} has shape {list(arr.shape)}; expected [{n}, count] (one row per image)")
    out = []
    for r, row in enumerate(arr):
        texts = []
        for c, x in enumerate(row):
            if isinstance(x, (bytes, np.bytes_)):
                try:
                    x = bytes(x).decode("utf-8")
                except UnicodeDecodeError:
                    raise RequestError(f"{name}[{r}][{c}] is not valid UTF-8; send text as UTF-8 bytes") from None
            if not isinstance(x, str):
                raise RequestError(f"{name}[{r}][{c}] is a {type(x).__name__}; send BYTES (UTF-8 text)")
            texts.append(x)
        out.append(texts)
    return out


def _decode_file(data: Any, where: str, max_pixels: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from edgeseg.runtime.images import load_image

    if not isinstance(data, (bytes, np.bytes_)) or not len(data):
        raise RequestError(f"{where} is empty; send one encoded PNG / JPEG / WebP file per image")
    try:
        im = Image.open(io.BytesIO(bytes(data)))
        return load_image(im, max_pixels=max_pixels)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise RequestError(f"{where} is not a readable image file ({type(e).__name__}: {str(e)[:80]}); send a PNG, "
                           f"JPEG or WebP file") from None


def decode(kind: str, inputs: Mapping[str, np.ndarray | None], parameters: Mapping[str, Any] | None = None,
           max_pixels: int | None = None, max_expressions: int = DEFAULT_MAX_EXPRESSIONS) -> Request:
    """A request's tensors (name -> array with the batch axis; None for an absent optional input) -> its items.
    Raises :class:`RequestError` with one line naming the problem and the fix."""
    from edgeseg.runtime.images import DEFAULT_MAX_PIXELS, load_image

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    image, files = inputs.get("image"), inputs.get("image_bytes")
    if (image is None) == (files is None):
        raise RequestError("give exactly one of the inputs 'image' (UINT8 [1, H, W, 3]) and 'image_bytes' (BYTES "
                           "[1, 1], an encoded PNG / JPEG file)")
    if image is not None:
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
            raise RequestError(f"input 'image' is {image.dtype} {list(image.shape)}; expected UINT8 [n, H, W, 3]")
        pixels = [load_image(np.ascontiguousarray(x), max_pixels=max_pixels) for x in image]
    else:
        if files.ndim != 2 or files.shape[1] != 1:
            raise RequestError(f"input 'image_bytes' has shape {list(files.shape)}; expected [n, 1] (one file per "
                               f"image)")
        pixels = [_decode_file(f[0], f"image_bytes[{i}]", max_pixels) for i, f in enumerate(files)]
    name = TEXTS[kind]
    arr = inputs.get(name)
    if arr is None:
        raise RequestError(f"input {name!r} is missing; send BYTES [1, count] with the {name}")
    texts = _texts(arr, name, len(pixels))
    if kind == "referring":
        for t in texts:
            if len(t) > max_expressions:
                raise RequestError(f"{len(t)} expressions in one request; this server takes at most "
                                   f"{max_expressions} per image (--max-expressions): split the request")
    params = dict(parameters or {})
    want = params.get("probabilities", False)
    if not isinstance(want, bool):
        raise RequestError(f"request parameter 'probabilities' is {want!r}; give true or false")
    return Request([Item(p, t) for p, t in zip(pixels, texts)], want)


def segmentation_outputs(results: list[Any], probabilities: bool) -> dict[str, np.ndarray]:
    """Per-item runtime results (``label_map`` H x W, ``labels``, ``probabilities`` C x h x w) -> output tensors
    with the batch axis: label_map [n, H, W] int32, scores [n, C] float32, probabilities [n, C, h, w]."""
    maps = np.stack([r.label_map.astype(np.int32) for r in results])
    scores = np.stack([np.bincount(r.label_map.ravel(), minlength=len(r.labels))[:len(r.labels)] / r.label_map.size
                       for r in results]).astype(np.float32)
    out = {"label_map": maps, "scores": scores}
    if probabilities:
        out["probabilities"] = np.stack([r.probabilities.astype(np.float32) for r in results])
    return out


def referring_outputs(results: list[list[Any]]) -> dict[str, np.ndarray]:
    """Per item, per expression runtime results (``mask``, ``scores['total']``, ``best``, ``target_word``) ->
    masks [n, K, H, W] bool, scores [n, K] float32, target_words [n, K] bytes."""
    masks = np.stack([np.stack([r.mask.astype(bool) for r in item]) for item in results])
    scores = np.array([[float(r.scores["total"][r.best]) for r in item] for item in results], np.float32)
    words = np.array([[r.target_word.encode("utf-8") for r in item] for item in results], dtype=np.object_)
    return {"masks": masks, "scores": scores, "target_words": words}
