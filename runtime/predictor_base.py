"""What every segmentation predictor shares: the bundle check, the two-phase ``set_image`` / ``predict`` state,
label parsing, the cached text embeddings and per-stage timings.

A method's predictor names its manifest ``METHOD`` and the ``ENCODER`` component ``set_image`` runs, and
implements ``predict(labels, ...)`` with :meth:`_require_image`, :meth:`_embed_labels` and :meth:`_timings_with`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .bundle import Bundle
from .images import load_image, preprocess, resize_maps
from .text import TextEncoder
from .tokenizer import clean_text


def parse_labels(labels: Any) -> list[str]:
    """A list of non-empty strings, or a comma-separated string. Labels are compared as the text encoder sees
    them (after its cleaning: HTML entities, control characters, case, whitespace), so "circle" and "CIRCLE", or
    "sand & water" and "sand &amp; water", are one label given twice and refused, and a label of only control
    characters or a BOM is refused as empty."""
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"labels must be a non-empty list of strings (or 'a,b,c'); got {labels!r}")
    out, seen = [], {}
    for i, x in enumerate(labels):
        if not isinstance(x, str) or not x.strip():
            raise ValueError(f"label {i} is {x!r}; every label must be a non-empty string")
        key = clean_text(x)
        if not key:
            raise ValueError(f"label {i} ({x!r}) is empty once cleaned for the text encoder (control characters, "
                             f"BOM or entities only); give a real word")
        if key in seen:
            raise ValueError(f"labels {seen[key]!r} and {x.strip()!r} are the same prompt {key!r} for the text "
                             f"encoder (it lower-cases and cleans text); give each label once")
        seen[key] = x.strip()
        out.append(x.strip())
    return out


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax, float32."""
    z = np.exp(logits - logits.max(axis, keepdims=True))
    return (z / z.sum(axis, keepdims=True)).astype(np.float32)


# full_probabilities=True refuses to allocate more than this (labels x H x W float32); the label map is always
# computed at full size, one label at a time, without it.
MAX_FULL_PROBABILITIES_BYTES = 2 << 30


@dataclass(frozen=True)
class ImageState:
    """One encoded image, immutable: what ``predict`` needs of it. Share it between threads freely.

    ``encoded``: the encoder's outputs (read-only arrays); ``input``: 1 x 3 x H' x W' float32, the preprocessed
    image (read-only); ``size``: (H, W) of the image given; ``timings_ms``: preprocess and encoder times."""

    encoded: Mapping[str, np.ndarray]
    input: np.ndarray
    size: tuple[int, int]
    timings_ms: Mapping[str, float]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.setflags(write=False)
    return a


class TwoPhasePredictor(ABC):
    """Base of the label-segmentation predictors.

    Thread safety: ``encode(image) -> ImageState`` and ``predict(labels, state=state)`` share nothing mutable
    between calls, so one predictor serves any number of threads. ``set_image`` / ``predict(labels)`` (no
    ``state``) is a convenience that keeps the image of the *calling thread*: two threads each calling
    ``set_image`` then ``predict`` get their own image's result. ``segment(image, labels)`` is one call.
    """

    METHOD = ""  # the manifest's "method"
    ENCODER = ""  # the component set_image runs on the 1x3xHxW image
    HEAD = ""  # the component predict runs with the text embeddings (its "text_embeds" input bounds the labels)

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider)
        if self.bundle.method != self.METHOD:
            raise ValueError(f"bundle {self.bundle.path} holds method {self.bundle.method!r}; "
                             f"{type(self).__name__} needs a bundle of method {self.METHOD!r} (edgeseg export {self.METHOD} ...)")
        self.config: dict = self.bundle.manifest.get("method_config", {})
        self.text = TextEncoder(self.bundle, cache_dir)
        self.template = self.config.get("template", "{}")
        self._local = threading.local()  # .state: the ImageState set_image gave this thread

    def encode(self, image: Any) -> ImageState:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path) once for any number of predicts."""
        t0 = time.perf_counter()
        img = load_image(image)
        x = preprocess(img, self.bundle.preprocessing)
        t1 = time.perf_counter()
        out = self.bundle.run(self.ENCODER, {"image": x})
        t2 = time.perf_counter()
        return ImageState({k: _frozen(v) for k, v in out.items()}, _frozen(x), tuple(img.shape[:2]),
                          {"preprocess": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3})

    def set_image(self, image: Any) -> ImageState:
        """:meth:`encode` and keep the result as the calling thread's current image; returns it."""
        state = self.encode(image)
        self._local.state = state
        return state

    def _require_image(self, state: ImageState | None = None) -> ImageState:
        state = state if state is not None else getattr(self._local, "state", None)
        if state is None:
            raise RuntimeError("no image set: call set_image(image) before predict(labels), or pass "
                               "state=predictor.encode(image)")
        if not isinstance(state, ImageState):
            raise ValueError(f"state must be the ImageState that encode(image) returns, got {type(state).__name__}")
        return state

    def _embed_labels(self, labels: Any) -> tuple[list[str], np.ndarray, list[str], float]:
        """(labels, N x D unit-norm text embeddings through the cache, labels cut at the context length, ms)."""
        names = parse_labels(labels)
        bound = self.bundle.spec(self.HEAD).input("text_embeds").max if self.HEAD else ()
        most = bound[0] if bound else None
        if most is not None and len(names) > most:
            raise ValueError(f"{len(names)} labels given; this bundle's {self.HEAD} takes at most {most} per call "
                             f"(the manifest's max): segment with fewer labels, or re-export with a larger max")
        t0 = time.perf_counter()
        text = self.text.embed(names, self.template)
        cut = self.text.tokenizer.truncated([self.template.format(n) for n in names])
        return names, text, [n for n, c in zip(names, cut) if c], (time.perf_counter() - t0) * 1e3

    @staticmethod
    def _timings_with(state: ImageState, **stages_ms: float) -> dict[str, float]:
        return dict(state.timings_ms, **stages_ms)

    def _provider(self, component: str) -> str:
        return self.bundle.providers_used.get(component, "")

    @staticmethod
    def _to_image_size(probs: np.ndarray, size: tuple[int, int], full: bool,
                       background: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """C x h x w probabilities -> (H x W int32 label map, probabilities). The label map is the argmax of the
        bilinearly upsampled probabilities, computed one label at a time (memory H x W, not C x H x W); with
        ``background``, a constant channel of that value is appended (label C). The probabilities are returned
        at h x w unless ``full`` (then at H x W, refused above MAX_FULL_PROBABILITIES_BYTES)."""
        C, (H, W) = probs.shape[0], tuple(size)
        extra = [] if background is None else [np.full((1,) + probs.shape[1:], background, np.float32)]
        if full:
            need = (C + len(extra)) * H * W * 4
            if need > MAX_FULL_PROBABILITIES_BYTES:
                raise ValueError(f"full-resolution probabilities for {C} labels at {H}x{W} need "
                                 f"{need / 2**30:.1f} GiB (limit {MAX_FULL_PROBABILITIES_BYTES / 2**30:.0f} GiB); use "
                                 f"fewer labels, a smaller image, or the default low-resolution probabilities")
            up = resize_maps(probs, size)
            if extra:
                up = np.concatenate([up, np.full((1, H, W), background, np.float32)])
            return up.argmax(0).astype(np.int32), up
        if probs.shape[1:] == (H, W):
            best, label_map = probs.max(0), probs.argmax(0).astype(np.int32)
        else:
            best = resize_maps(probs[:1], size)[0]
            label_map = np.zeros((H, W), np.int32)
            for c in range(1, C):
                up = resize_maps(probs[c:c + 1], size)[0]
                better = up > best  # strict: ties keep the lower label, as argmax does
                best[better] = up[better]
                label_map[better] = c
        if background is not None:
            label_map[best < np.float32(background)] = C
        return label_map, np.concatenate([probs, *extra]) if extra else probs

    @abstractmethod
    def predict(self, labels: Any, *, state: ImageState | None = None, full_probabilities: bool = False):
        """Segment an image into ``labels``: the one ``state`` holds, else the calling thread's
        :meth:`set_image` image. Each method's result dataclass; its ``probabilities`` are at the model's
        resolution unless ``full_probabilities``."""

    def segment(self, image: Any, labels: Any, **kwargs: Any):
        """One shot: :meth:`set_image` (the calling thread's image) then :meth:`predict` on it."""
        return self.predict(labels, state=self.set_image(image), **kwargs)
