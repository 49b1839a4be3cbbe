"""TCL predictor: ``set_image`` runs the encoder once; ``predict(labels)`` runs the cheap head, then PAMR.

    pred = TCLPredictor(Bundle("engines/tcl_toy"))           # postprocess=True: PAMR refinement (numpy)
    pred.set_image("scene.png")                               # uint8 HxWx3 array, PIL image or path
    res = pred.predict(["circle", "star", "grass"])           # every pixel gets one of the labels
    res = pred.predict(["circle", "star"], background=True)   # pixels whose best mask < 0.4 -> "background"

Pipeline: preprocess -> ``tcl_encoder`` (grounding + MaskCLIP embeddings) -> text embeddings (cached) ->
``tcl_head`` (mask probabilities at 1/4 resolution) -> bilinear to the model input size -> PAMR with the
preprocessed image (iterations and dilations from the manifest, overridable) -> bilinear to the image size ->
optional background threshold -> argmax.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle
from .images import resize_maps
from .lseg import LSegResult
from .pamr import DEFAULT_DILATIONS, DEFAULT_ITERATIONS, _check, pamr
from .predictor_base import ImageState, TwoPhasePredictor, parse_labels

BACKGROUND = "background"


@dataclass
class TCLResult(LSegResult):
    """Fields as :class:`LSegResult`; ``probabilities`` are TCL's independent mask probabilities (sigmoid, not
    softmax), C x H x W, plus a constant last channel equal to the threshold when background was asked for
    (then ``labels[-1] == "background"``)."""

    background_threshold: float | None = None


class TCLPredictor(TwoPhasePredictor):
    """TCL: text-grounded masks (encoder once per image, head per label set), PAMR refinement.

    Thread-safe: ``state = pred.encode(image)`` then ``pred.predict(labels, state=state)`` from any number of
    threads; ``set_image`` / ``predict`` keep one image per calling thread."""

    METHOD, ENCODER, HEAD = "tcl", "tcl_encoder", "tcl_head"

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True, pamr_iterations: int | None = None,
                 pamr_dilations: Sequence[int] | None = None):
        """``postprocess``: run PAMR (default on). ``pamr_iterations`` / ``pamr_dilations`` override the
        manifest's (defaults 10 and [1, 2, 4, 8, 12, 24])."""
        super().__init__(bundle, cache_dir, provider)
        pcfg = self.config.get("pamr", {})
        self.pamr_iterations = (pcfg.get("iterations", DEFAULT_ITERATIONS) if pamr_iterations is None
                                else pamr_iterations)
        self.pamr_dilations = tuple(pcfg.get("dilations", DEFAULT_DILATIONS) if pamr_dilations is None
                                    else pamr_dilations)
        _check(self.pamr_iterations, self.pamr_dilations)
        self.postprocess = bool(postprocess)
        self.bg_threshold = float(self.config.get("bg_threshold", 0.4))

    def _threshold(self, background: bool | float) -> float | None:
        if background is False or background is None:
            return None
        if background is True:
            return self.bg_threshold
        if isinstance(background, (int, float)) and 0.0 <= float(background) <= 1.0:
            return float(background)
        raise ValueError(f"background must be False, True (threshold {self.bg_threshold} from the bundle) or a "
                         f"threshold in [0, 1]; got {background!r}")

    def predict(self, labels: Any, background: bool | float = False, *, state: ImageState | None = None,
                full_probabilities: bool = False) -> TCLResult:
        """Segment the image given to :meth:`set_image` into ``labels`` (list or 'a,b,c'). ``background``:
        True (the bundle's threshold, 0.4) or a threshold in [0, 1] labels pixels whose best mask is below it
        "background"; False (default): every pixel gets one of ``labels``."""
        st = self._require_image(state)
        embeds = st.encoded
        threshold = self._threshold(background)
        if threshold is not None and BACKGROUND in parse_labels(labels):
            raise ValueError(f"label {BACKGROUND!r} is added by background=...; drop it from the labels or pass "
                             f"background=False")
        names, text, cut, text_ms = self._embed_labels(labels)
        t1 = time.perf_counter()
        feeds = {"grounding_embeds": embeds["grounding_embeds"], "clip_dense_embeds": embeds["clip_dense_embeds"]}
        masks = self.bundle.run("tcl_head", dict(feeds, text_embeds=text))["masks"][0]
        t2 = time.perf_counter()
        x = st.input
        masks = resize_maps(masks.astype(np.float32), x.shape[2:])
        if self.postprocess:
            masks = pamr(x[0], masks, self.pamr_iterations, self.pamr_dilations)
        label_map, probs = self._to_image_size(masks, st.size, full_probabilities, threshold)
        if threshold is not None:
            names = names + [BACKGROUND]
        t3 = time.perf_counter()
        timings = self._timings_with(st, text=text_ms, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return TCLResult(names, label_map, probs, timings, self._provider("tcl_head"), cut, threshold)
