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
from .predictor_base import ImageState, TwoPhasePredictor, parse_labels, softmax

__all__ = ["LSegPredictor", "LSegResult", "parse_labels"]


@dataclass
class LSegResult:
    labels: list[str]
    label_map: np.ndarray  # H x W int32, index into labels (H, W of the input image)
    probabilities: np.ndarray  # C x h x w float32, softmax over labels, at the model's resolution (sliding
    # windows: of the blended canvas; C x H x W with predict(..., full_probabilities=True))
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    provider: str = ""
    truncated_labels: list[str] = field(default_factory=list)  # labels cut at the tokenizer's context length

    def mask(self, label: str) -> np.ndarray:
        """H x W bool mask of one label."""
        if label not in self.labels:
            raise ValueError(f"label {label!r} was not predicted; labels: {self.labels}")
        return self.label_map == self.labels.index(label)


class LSegPredictor(TwoPhasePredictor):
    """LSeg: pixel embeddings (encoder, once per image) against label embeddings (head, per label set).

    Thread-safe: ``state = pred.encode(image)`` then ``pred.predict(labels, state=state)`` from any number of
    threads; ``set_image`` / ``predict`` keep one image per calling thread."""

    METHOD, ENCODER, HEAD = "lseg", "lseg_encoder", "lseg_head"

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True):
        """``postprocess`` is accepted for the common predictor API (LSeg has no refinement step)."""
        super().__init__(bundle, cache_dir, provider)

    def predict(self, labels: Any, *, state: ImageState | None = None,
                full_probabilities: bool = False) -> LSegResult:
        """Segment an image (``state`` from :meth:`encode`, else this thread's :meth:`set_image` image) into
        ``labels`` (list or 'a,b,c')."""
        st = self._require_image(state)
        names, text, cut, text_ms = self._embed_labels(labels)
        t1 = time.perf_counter()
        if st.tiling is None:
            logits = self.bundle.run("lseg_head", {"pixel_embeds": st.encoded["pixel_embeds"],
                                                   "text_embeds": text})["logits"][0]
            t2 = time.perf_counter()
            label_map, probs = self._to_image_size(softmax(logits), st.size, full_probabilities)
        else:  # sliding windows: logits blended over the windows, the label map from the resized logits
            tiles = self._run_batched("lseg_head", {"pixel_embeds": st.encoded["pixel_embeds"]},
                                      {"text_embeds": text})["logits"]
            t2 = time.perf_counter()
            label_map, probs = self._tiled_to_image_size(st.tiling.blend(tiles), st, full_probabilities,
                                                         probabilities=softmax)
        t3 = time.perf_counter()
        return LSegResult(names, label_map, probs,
                          self._timings_with(st, text=text_ms, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3),
                          self._provider("lseg_head"), cut)
