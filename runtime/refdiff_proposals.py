"""Ref-Diff's proposal generator as a stage of its own: SAM automatic masks (``sam_encoder`` + ``sam_decoder`` +
the numpy mask generator of :mod:`edgeseg.runtime.sam_auto`), cached per image.

    gen = ProposalGenerator(bundle)
    props = gen(image)              # SamProposals: masks N x H x W bool, largest first (the bundle's amg top_k)
    props.predicted_iou, props.stability                  # N float32 each
    gen(image).cached               # True: the same pixels again are a cache hit (read-only arrays, shared)

The mask generator's settings (grid, IoU / stability filters, NMS, area limits, top_k) are the manifest's
``method_config["amg"]``; ``amg=`` overrides some of them. The per-mask work (upsampling to the image,
thresholds, stability, boxes) runs in the bundle's ``sam_masks`` engine; a bundle exported before it existed
runs it in numpy (same masks, slower) and says so once with a warning naming the re-export.
``progress=True`` prints the point batches to stderr once the stage has run a few seconds (quiet by default).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import warnings

import numpy as np

from .bundle import Bundle
from .images import load_image
from .refdiff_localize import open_bundle
from .sam_auto import AMG_DEFAULTS, ProgressFn, generate_masks, sam_preprocess


@dataclass
class SamProposals:
    """Automatic masks of one image. ``masks`` N x H x W bool (largest first), ``predicted_iou`` and ``stability``
    N float32; ``timings_ms`` {"sam_encoder", "sam_proposals"} of this call (0.0 each on a cache hit);
    ``cached``: the masks came from the per-image cache."""

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def __len__(self) -> int:
        return len(self.masks)


def image_key(image: np.ndarray) -> tuple:
    """A cache key of an image's pixels: (shape, sha1 of the bytes)."""
    return image.shape, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class ProposalGenerator:
    """``ProposalGenerator(bundle, provider=None, amg=None, cache_size=4, progress=None)``: image ->
    :class:`SamProposals`.

    amg: overrides of the manifest's mask-generator settings (keys of :data:`edgeseg.runtime.sam_auto.AMG_DEFAULTS`);
    cache_size: how many images' proposals are kept (least recently used dropped; 0: no cache);
    progress: None/False (quiet), True (point batches on stderr once the stage has run 2 s), or a callable
    ``(done, total)`` called after each point batch."""

    COMPONENTS = ("sam_encoder", "sam_decoder")  # the bundle components this stage needs (+ sam_masks if there)
    MASKS = "sam_masks"  # the post-processing engine (bundles exported since it exists)

    def __init__(self, bundle: Bundle | str | Path, provider: str | None = None, amg: dict[str, Any] | None = None,
                 cache_size: int = 4, progress: bool | ProgressFn | None = None):
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ValueError(f"progress must be None, a bool or a callable (done, total), got {progress!r}")
        self.bundle = open_bundle(bundle, provider, self.COMPONENTS, type(self).__name__)
        self.progress = progress
        self.engine_masks = self.MASKS in self.bundle.components
        if self.engine_masks:
            self.COMPONENTS = (*type(self).COMPONENTS, self.MASKS)
        else:
            warnings.warn(f"bundle {self.bundle.path} has no {self.MASKS!r} component: SAM mask post-processing "
                          f"runs in numpy (same masks, several times slower); re-export it with edgeseg export "
                          f"refdiff CONFIG --out DIR", stacklevel=2)
        self.config: dict = self.bundle.manifest.get("method_config", {})
        unknown = sorted(set(amg or {}) - set(AMG_DEFAULTS) - {"img_size"})
        if unknown:
            raise ValueError(f"unknown amg option(s) {unknown}; known: {sorted(AMG_DEFAULTS)}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.amg: dict[str, Any] = dict(self.config["amg"], **(amg or {}))
        self.sam_preprocessing: dict = self.config["sam_preprocessing"]
        self.mask_threshold = self.config.get("mask_threshold", 0.0)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, SamProposals] = OrderedDict()
        self._lock = threading.Lock()  # the cache is shared by every thread using this generator

    def embed(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (1 x C x g x g float32 SAM image embeddings, (h, w) of the resized image inside
        the S x S encoder input)."""
        x, input_hw = sam_preprocess(image, self.sam_preprocessing)
        return self.bundle.run("sam_encoder", {"image": x})["image_embeddings"], input_hw

    def masks_from_embeddings(self, embeddings: np.ndarray, original_hw: tuple[int, int],
                              input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The automatic masks of an embedded image (H, W = ``original_hw``): (masks N x H x W bool, largest
        first, predicted_iou N float32, stability N float32)."""
        run_masks, max_prompts = None, 1
        if self.engine_masks:
            run_masks = lambda feeds: self.bundle.run(self.MASKS, feeds)  # noqa: E731
            max_prompts = int(self.bundle.spec(self.MASKS).input("image_tokens").max[0])
        progress = StderrProgress("sam proposals") if self.progress is True else (self.progress or None)
        return generate_masks(lambda feeds: self.bundle.run("sam_decoder", feeds), embeddings, original_hw,
                              input_hw, self.amg, self.sam_preprocessing["img_size"], self.mask_threshold,
                              run_masks=run_masks, max_prompts=max_prompts, progress=progress)

    def __call__(self, image: Any) -> SamProposals:
        """The automatic masks of an image (uint8 H x W x 3 RGB array, PIL image or path), from the cache when
        the same pixels were seen."""
        img = load_image(image)
        key = image_key(img) if self.cache_size else None
        with self._lock:
            hit = self._cache.get(key) if key is not None else None
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            return replace(hit, timings_ms={"sam_encoder": 0.0, "sam_proposals": 0.0}, cached=True)
        t0 = time.perf_counter()
        emb, input_hw = self.embed(img)
        t1 = time.perf_counter()
        masks, ious, stab = self.masks_from_embeddings(emb, img.shape[:2], input_hw)
        t2 = time.perf_counter()
        for a in (masks, ious, stab):
            a.flags.writeable = False  # shared with every later cache hit
        out = SamProposals(masks, ious, stab, {"sam_encoder": (t1 - t0) * 1e3, "sam_proposals": (t2 - t1) * 1e3})
        if key is not None:
            with self._lock:
                self._cache[key] = out
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        """Forget the cached proposals."""
        with self._lock:
            self._cache.clear()


class StderrProgress:
    """A ``progress(done, total)`` callback printing ``label: done/total point batches (t s)`` on one stderr
    line, starting only once ``after_s`` seconds have passed (short runs stay quiet)."""

    def __init__(self, label: str, after_s: float = 2.0, stream: Any = None):
        self.label, self.after_s, self.stream = label, after_s, stream
        self.t0 = time.perf_counter()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.t0
        if not self.shown and elapsed < self.after_s:
            return
        out = self.stream or sys.stderr
        self.shown = True
        out.write(f"\r{self.label}: {done}/{total} point batches ({elapsed:.0f} s)" + ("\n" if done >= total else ""))
        out.flush()
