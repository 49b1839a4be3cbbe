"""What every segmentation predictor shares: the bundle check, the two-phase ``set_image`` / ``predict`` state,
label parsing, the cached text embeddings and per-stage timings.

A method's predictor names its manifest ``METHOD`` and the ``ENCODER`` component ``set_image`` runs, and
implements ``predict(labels, ...)`` with :meth:`_require_image`, :meth:`_embed_labels` and :meth:`_timings_with`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .images import load_image, preprocess
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


class TwoPhasePredictor(ABC):
    METHOD = ""  # the manifest's "method"
    ENCODER = ""  # the component set_image runs on the 1x3xHxW image

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider)
        if self.bundle.method != self.METHOD:
            raise ValueError(f"bundle {self.bundle.path} holds method {self.bundle.method!r}; "
                             f"{type(self).__name__} needs a bundle of method {self.METHOD!r} (edgeseg export {self.METHOD} ...)")
        self.config: dict = self.bundle.manifest.get("method_config", {})
        self.text = TextEncoder(self.bundle, cache_dir)
        self.template = self.config.get("template", "{}")
        self._encoded: dict[str, np.ndarray] | None = None  # the encoder's outputs for the current image
        self._input: np.ndarray | None = None  # 1 x 3 x H' x W' preprocessed image
        self._size: tuple[int, int] = (0, 0)  # H, W of the image given
        self._timings: dict[str, float] = {}

    def set_image(self, image: Any) -> None:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path) once for any number of predicts."""
        t0 = time.perf_counter()
        img = load_image(image)
        x = preprocess(img, self.bundle.preprocessing)
        t1 = time.perf_counter()
        out = self.bundle.run(self.ENCODER, {"image": x})
        t2 = time.perf_counter()
        self._encoded, self._input, self._size = out, x, img.shape[:2]
        self._timings = {"preprocess": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3}

    def _require_image(self) -> dict[str, np.ndarray]:
        if self._encoded is None:
            raise RuntimeError("no image set: call set_image(image) before predict(labels)")
        return self._encoded

    def _embed_labels(self, labels: Any) -> tuple[list[str], np.ndarray, list[str], float]:
        """(labels, N x D unit-norm text embeddings through the cache, labels cut at the context length, ms)."""
        names = parse_labels(labels)
        t0 = time.perf_counter()
        text = self.text.embed(names, self.template)
        cut = self.text.tokenizer.truncated([self.template.format(n) for n in names])
        return names, text, [n for n, c in zip(names, cut) if c], (time.perf_counter() - t0) * 1e3

    def _timings_with(self, **stages_ms: float) -> dict[str, float]:
        return dict(self._timings, **stages_ms)

    def _provider(self, component: str) -> str:
        return self.bundle.providers_used.get(component, "")

    @abstractmethod
    def predict(self, labels: Any):
        """Segment the image given to :meth:`set_image` into ``labels``; each method's result dataclass."""

    def segment(self, image: Any, labels: Any, **kwargs: Any):
        """One shot: :meth:`set_image` then :meth:`predict`."""
        self.set_image(image)
        return self.predict(labels, **kwargs)
