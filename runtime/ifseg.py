"""IFSeg predictor: ``set_image`` runs the frozen CLIP dense encoder once; ``predict(labels)`` runs the
word-trained decoder head, then (``postprocess=True``) IFSeg's kNN refinement over the image features.

    bundle = Bundle("engines/ifseg_toy")
    pred = IFSegPredictor(bundle)             # postprocess=True: kNN (K=3 incl. self, 25 iterations)
    pred.set_image("scene.png")               # uint8 HxWx3 array, PIL image or path
    res = pred.predict(["circle", "star", "grass"])
    res.label_map                             # HxW int32, indices into res.labels

Order of operations in ``predict``: head logits at the feature grid (C x h x w) -> softmax over labels -> kNN
refinement at the grid (:mod:`edgeseg.runtime.knn`) -> bilinear resize to the input size -> argmax.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .images import load_image, preprocess, resize_maps
from .knn import DEFAULT_ITERATIONS, DEFAULT_K, knn_refine
from .lseg import parse_labels
from .text import TextEncoder


@dataclass
class IFSegResult:
    labels: list[str]
    label_map: np.ndarray  # H x W int32, index into labels (H, W of the input image)
    probabilities: np.ndarray  # C x H x W float32, softmax over labels (kNN-refined when postprocess)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    provider: str = ""
    truncated_labels: list[str] = field(default_factory=list)  # labels cut at the tokenizer's context length
    postprocess: bool = True  # whether the kNN refinement ran

    def mask(self, label: str) -> np.ndarray:
        """H x W bool mask of one label."""
        if label not in self.labels:
            raise ValueError(f"label {label!r} was not predicted; labels: {self.labels}")
        return self.label_map == self.labels.index(label)


class IFSegPredictor:
    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True, knn_k: int | None = None,
                 knn_iterations: int | None = None):
        """``postprocess``: run the kNN refinement; ``knn_k`` / ``knn_iterations`` override the bundle's
        defaults (``method_config.knn``: K = 3 including self, 25 iterations)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider)
        if self.bundle.method != "ifseg":
            raise ValueError(f"bundle {self.bundle.path} holds method {self.bundle.method!r}; IFSegPredictor "
                             f"needs an 'ifseg' bundle (edgeseg export ifseg ...)")
        cfg = self.bundle.manifest.get("method_config", {})
        knn = cfg.get("knn", {})
        self.knn_k = int(knn.get("k", DEFAULT_K) if knn_k is None else knn_k)
        self.knn_iterations = int(knn.get("iterations", DEFAULT_ITERATIONS) if knn_iterations is None
                                  else knn_iterations)
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1 (the position itself counts), got {self.knn_k}")
        if self.knn_iterations < 0:
            raise ValueError(f"knn_iterations must be >= 0, got {self.knn_iterations}")
        self.postprocess = bool(postprocess)
        self.text = TextEncoder(self.bundle, cache_dir)
        self.template = cfg.get("template", "{}")
        self._dense: np.ndarray | None = None  # 1 x D x h x w
        self._size: tuple[int, int] = (0, 0)
        self._timings: dict[str, float] = {}

    def set_image(self, image: Any) -> None:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path) once for any number of predicts."""
        t0 = time.perf_counter()
        img = load_image(image)
        x = preprocess(img, self.bundle.preprocessing)
        t1 = time.perf_counter()
        self._dense = self.bundle.run("ifseg_encoder", {"image": x})["dense_embeds"]
        t2 = time.perf_counter()
        self._size = img.shape[:2]
        self._timings = {"preprocess": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3}

    def predict(self, labels: Any) -> IFSegResult:
        """Segment the image given to :meth:`set_image` into ``labels`` (list or 'a,b,c')."""
        if self._dense is None:
            raise RuntimeError("no image set: call set_image(image) before predict(labels)")
        names = parse_labels(labels)
        t0 = time.perf_counter()
        text = self.text.embed(names, self.template)
        cut = self.text.tokenizer.truncated([self.template.format(n) for n in names])
        t1 = time.perf_counter()
        logits = self.bundle.run("ifseg_head", {"dense_embeds": self._dense, "text_embeds": text})["logits"][0]
        t2 = time.perf_counter()
        logits = logits - logits.max(0, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(0, keepdims=True)
        if self.postprocess:
            probs = knn_refine(probs, self._dense[0], self.knn_k, self.knn_iterations)
        probs = resize_maps(probs.astype(np.float32), self._size)
        label_map = probs.argmax(0).astype(np.int32)
        t3 = time.perf_counter()
        timings = dict(self._timings, text=(t1 - t0) * 1e3, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return IFSegResult(names, label_map, probs, timings, self.bundle.providers_used.get("ifseg_head", ""),
                           [n for n, c in zip(names, cut) if c], self.postprocess)

    def segment(self, image: Any, labels: Any) -> IFSegResult:
        """One shot: :meth:`set_image` then :meth:`predict`."""
        self.set_image(image)
        return self.predict(labels)
