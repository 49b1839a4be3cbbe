"""TCL predictor: ``set_image`` runs the encoder once; ``predict(labels)`` runs the cheap head, then PAMR.

    pred = TCLPredictor(Bundle("engines/tcl_toy"))           # postprocess=True: PAMR refinement (numpy)
    pred.set_image("scene.png")                               # uint8 HxWx3 array, PIL image or path
    res = pred.predict(["circle", "star", "grass"])           # every pixel gets one of the labels
    res = pred.predict(["circle", "star"], background=True)   # pixels whose best mask < 0.4 -> "background"

Pipeline (``order="official"``, TCL's ``generate_masks``): preprocess -> ``tcl_encoder`` (grounding + MaskCLIP
embeddings) -> text embeddings (cached) -> ``tcl_head`` (the TCL mask and the MaskCLIP term at 1/4 of the
input) -> PAMR on the TCL mask at that resolution, with the preprocessed image bilinearly resized to it
(align_corners=True; iterations and dilations from the manifest, overridable) -> kp_weight * MaskCLIP +
(1 - kp_weight) * TCL (0.3 / 0.7) -> bilinear to the model input -> bilinear to the image size -> optional
background threshold -> argmax. ``order="mix-first"`` (edgeseg's earlier order, and the only one of bundles
exported before the head had two outputs): mix, bilinear to the model input, PAMR there. Sliding windows
(``segment(..., window=...)``; TCL's evaluation: short side 448, window 448, stride 224) run this per window
and average the windows' masks where they overlap.
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
from .resample import resize_linear

BACKGROUND = "background"
ORDERS = ("official", "mix-first")  # PAMR on the TCL mask then mix (TCL's code) | mix then PAMR at input size


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
                 pamr_dilations: Sequence[int] | None = None, order: str | None = None):
        """``postprocess``: run PAMR (default on). ``pamr_iterations`` / ``pamr_dilations`` override the
        manifest's (defaults 10 and [1, 2, 4, 8, 12, 24]). ``order``: "official" (the default) or "mix-first"
        (see the module docstring); bundles whose head mixes in the graph support only "mix-first"."""
        super().__init__(bundle, cache_dir, provider)
        pcfg = self.config.get("pamr", {})
        self.pamr_iterations = (pcfg.get("iterations", DEFAULT_ITERATIONS) if pamr_iterations is None
                                else pamr_iterations)
        self.pamr_dilations = tuple(pcfg.get("dilations", DEFAULT_DILATIONS) if pamr_dilations is None
                                    else pamr_dilations)
        _check(self.pamr_iterations, self.pamr_dilations)
        self.postprocess = bool(postprocess)
        self.bg_threshold = float(self.config.get("bg_threshold", 0.4))
        outputs = [t.name for t in self.bundle.spec("tcl_head").outputs]
        self.mixed_in_graph = outputs == ["masks"]
        self.kp_weight = float(self.config.get("kp_weight", 0.3))
        default = "mix-first" if self.mixed_in_graph else self.config.get("order", "official")
        self.order = default if order is None else order
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {list(ORDERS)}, got {self.order!r}")
        if self.mixed_in_graph and self.order != "mix-first":
            raise ValueError(f"bundle {self.bundle.path} mixes the TCL and MaskCLIP masks inside tcl_head (exported "
                             f"before the official order): only order='mix-first' runs on it; re-export it for "
                             f"order='official'")

    def _refine(self, head: dict[str, np.ndarray], image: np.ndarray) -> np.ndarray:
        """One image's head outputs (C x h x w each) and its preprocessed input 3 x H x W -> C x H x W masks in
        the configured order, PAMR included when post-processing is on."""
        size = image.shape[1:]
        if self.mixed_in_graph or self.order == "mix-first":
            masks = head["masks"] if self.mixed_in_graph else (
                self.kp_weight * head["kp_masks"] + (1.0 - self.kp_weight) * head["tcl_masks"])
            masks = resize_maps(masks.astype(np.float32), size)
            return pamr(image, masks, self.pamr_iterations, self.pamr_dilations) if self.postprocess else masks
        masks = head["tcl_masks"].astype(np.float32)
        if self.postprocess:
            small = resize_linear(image, masks.shape[1:], align_corners=True)
            masks = pamr(small, masks, self.pamr_iterations, self.pamr_dilations)
        masks = self.kp_weight * head["kp_masks"] + (1.0 - self.kp_weight) * masks
        return resize_linear(masks.astype(np.float32), size)

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
        head = self._run_batched("tcl_head", feeds, {"text_embeds": text})
        t2 = time.perf_counter()
        if st.tiling is None:
            masks = self._refine({k: v[0] for k, v in head.items()}, st.input[0])
            label_map, probs = self._to_image_size(masks, st.size, full_probabilities, threshold)
        else:  # sliding windows: each window's masks at the window size, averaged where windows overlap
            tiles = st.tiling.cut(st.input, self._pad_value())
            masks = np.stack([self._refine({k: v[i] for k, v in head.items()}, tiles[i]) for i in range(len(tiles))])
            label_map, probs = self._tiled_to_image_size(st.tiling.blend(masks), st, full_probabilities, threshold)
        if threshold is not None:
            names = names + [BACKGROUND]
        t3 = time.perf_counter()
        timings = self._timings_with(st, text=text_ms, head=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return TCLResult(names, label_map, probs, timings, self._provider("tcl_head"), cut, threshold)
