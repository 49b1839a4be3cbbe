"""LSeg predictor: ``set_image`` runs the encoder once; ``predict(labels)`` runs only the cheap head.

    bundle = Bundle("engines/lseg_toy")
    pred = LSegPredictor(bundle)
    pred.set_image("scene.png")               # uint8 HxWx3 array, PIL image or path
    res = pred.predict(["circle", "star", "grass"])
    res.label_map                             # HxW int32, indices into res.labels
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .images import load_image, preprocess, resize_maps
from .text import TextEncoder


@dataclass
class LSegResult:
    labels: list[str]
    label_map: np.ndarray  # H x W int32, index into labels (H, W of the input image)
    probabilities: np.ndarray  # C x H x W float32, softmax over labels
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    provider: str = ""
    truncated_labels: list[str] = field(default_factory=list)  # labels cut at the tokenizer's context length

    def mask(self, label: str) -> np.ndarray:
        """H x W bool mask of one label."""
        if label not in self.labels:
            raise ValueError(f"label {label!r} was not predicted; labels: {self.labels}")
        return self.label_map == self.labels.index(label)


def parse_labels(labels: Any) -> list[str]:
    """A list of non-empty strings, or a comma-separated string; duplicates refused."""
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",")]
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"labels must be a non-empty list of strings (or 'a,b,c'); got {labels!r}")
    out = []
    for i, x in enumerate(labels):
        if not isinstance(x, str) or not x.strip():
            raise ValueError(f"label {i} is {x!r}; every label must be a non-empty string")
        out.append(x.strip())
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate labels {dup}; give each label once")
    return out


class LSegPredictor:
    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True):
        """``postprocess`` is accepted for the common predictor API (LSeg has no refinement step)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider)
        if self.bundle.method != "lseg":
            raise ValueError(f"bundle {self.bundle.path} holds method {self.bundle.method!r}; LSegPredictor "
                             f"needs an 'lseg' bundle (edgeseg export lseg ...)")
        self.text = TextEncoder(self.bundle, cache_dir)
        self.template = self.bundle.manifest["method_config"].get("template", "{}")
        self._pixel: np.ndarray | None = None
        self._size: tuple[int, int] = (0, 0)
        self._timings: dict[str, float] = {}

    def set_image(self, image: Any) -> None:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path) once for any number of predicts."""
        t0 = time.perf_counter()
        img = load_image(image)
        x = preprocess(img, self.bundle.preprocessing)
        t1 = time.perf_counter()
        self._pixel = self.bundle.run("lseg_encoder", {"image": x})["pixel_embeds"]
        t2 = time.perf_counter()
        self._size = img.shape[:2]
        self._timings = {"preprocess": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3}

    def predict(self, labels: Any) -> LSegResult:
        """Segment the image given to :meth:`set_image` into ``labels`` (list or 'a,b,c')."""
        if self._pixel is None:
            raise RuntimeError("no image set: call set_image(image) before predict(labels)")
        names = parse_labels(labels)
        t0 = time.perf_counter()
        text = self.text.embed(names, self.template)
        cut = self.text.tokenizer.truncated([self.template.format(n) for n in names])
        t1 = time.perf_counter()
        logits = self.bundle.run("lseg_head", {"pixel_embeds": self._pixel, "text_embeds": text})["logits"][0]
        t2 = time.perf_counter()
        logits = logits - logits.max(0, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(0, keepdims=True)
        probs = resize_maps(probs.astype(np.float32), self._size)
        label_map = probs.argmax(0).astype(np.int32)
        t3 = time.perf_counter()
        timings = dict(self._timings, text=(t1 - t0) * 1e3, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return LSegResult(names, label_map, probs, timings, self.bundle.providers_used.get("lseg_head", ""),
                          [n for n, c in zip(names, cut) if c])

    def segment(self, image: Any, labels: Any) -> LSegResult:
        """One shot: :meth:`set_image` then :meth:`predict`."""
        self.set_image(image)
        return self.predict(labels)
