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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .knn import DEFAULT_ITERATIONS, DEFAULT_K, knn_refine
from .lseg import LSegResult
from .predictor_base import ImageState, TwoPhasePredictor, softmax
from .resample import resize_linear


@dataclass
class IFSegResult(LSegResult):
    """Fields as :class:`LSegResult` (``probabilities``: softmax over labels, kNN-refined when post-processed),
    plus whether the kNN refinement ran."""

    postprocess: bool = True


class IFSegPredictor(TwoPhasePredictor):
    """IFSeg: dense CLIP features (once per image) decoded against category words, kNN refinement.

    Thread-safe: ``state = pred.encode(image)`` then ``pred.predict(labels, state=state)`` from any number of
    threads; ``set_image`` / ``predict`` keep one image per calling thread."""

    METHOD, ENCODER, HEAD = "ifseg", "ifseg_encoder", "ifseg_head"

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True, knn_k: int | None = None,
                 knn_iterations: int | None = None):
        """``postprocess``: run the kNN refinement; ``knn_k`` / ``knn_iterations`` override the bundle's
        defaults (``method_config.knn``: K = 3 including self, 25 iterations)."""
        super().__init__(bundle, cache_dir, provider)
        knn = self.config.get("knn", {})
        self.knn_k = int(knn.get("k", DEFAULT_K) if knn_k is None else knn_k)
        self.knn_iterations = int(knn.get("iterations", DEFAULT_ITERATIONS) if knn_iterations is None
                                  else knn_iterations)
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1 (the position itself counts), got {self.knn_k}")
        if self.knn_iterations < 0:
            raise ValueError(f"knn_iterations must be >= 0, got {self.knn_iterations}")
        self.postprocess = bool(postprocess)

    def predict(self, labels: Any, *, state: ImageState | None = None,
                full_probabilities: bool = False) -> IFSegResult:
        """Segment an image (``state`` from :meth:`encode`, else this thread's :meth:`set_image` image) into
        ``labels`` (list or 'a,b,c')."""
        st = self._require_image(state)
        dense = st.encoded["dense_embeds"]
        names, text, cut, text_ms = self._embed_labels(labels)
        t1 = time.perf_counter()
        if st.tiling is None:
            logits = self.bundle.run("ifseg_head", {"dense_embeds": dense, "text_embeds": text})["logits"][0]
            t2 = time.perf_counter()
            probs = self._refine(softmax(logits), dense[0])
            label_map, probs = self._to_image_size(probs.astype(np.float32), st.size, full_probabilities)
        else:  # sliding windows: each window's refined probabilities at the window size, blended
            logits = self._run_batched("ifseg_head", {"dense_embeds": dense}, {"text_embeds": text})["logits"]
            t2 = time.perf_counter()
            win = st.tiling.window
            tiles = np.stack([resize_linear(self._refine(softmax(lg), d), win) for lg, d in zip(logits, dense)])
            label_map, probs = self._tiled_to_image_size(st.tiling.blend(tiles), st, full_probabilities)
        t3 = time.perf_counter()
        timings = self._timings_with(st, text=text_ms, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return IFSegResult(names, label_map, probs, timings, self._provider("ifseg_head"), cut, self.postprocess)

    def _refine(self, probs: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """C x h x w probabilities -> kNN-refined over the D x h x w features when post-processing is on."""
        return knn_refine(probs, dense, self.knn_k, self.knn_iterations) if self.postprocess else probs
