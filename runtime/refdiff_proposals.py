"""Ref-Diff's proposal generator as a stage of its own: SAM automatic masks (``sam_encoder`` + ``sam_decoder`` +
the numpy mask generator of :mod:`edgeseg.runtime.sam_auto`), cached per image.

    gen = ProposalGenerator(bundle)
    props = gen(image)              # SamProposals: masks N x H x W bool, largest first (the bundle's amg top_k)
    props.predicted_iou, props.stability                  # N float32 each
    gen(image).cached               # True: the same pixels again are a cache hit (read-only arrays, shared)

The mask generator's settings (grid, IoU / stability filters, NMS, area limits, top_k) are the manifest's
``method_config["amg"]``; ``amg=`` overrides some of them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .images import load_image
from .refdiff_localize import open_bundle
from .sam_auto import AMG_DEFAULTS, generate_masks, sam_preprocess



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
    """``ProposalGenerator(bundle, provider=None, amg=None, cache_size=4)``: image -> :class:`SamProposals`.

    amg: overrides of the manifest's mask-generator settings (keys of :data:`edgeseg.runtime.sam_auto.AMG_DEFAULTS`);
    cache_size: how many images' proposals are kept (least recently used dropped; 0: no cache)."""

    COMPONENTS = ("sam_encoder", "sam_decoder")  # the bundle components this stage runs

    def __init__(self, bundle: Bundle | str | Path, provider: str | None = None, amg: dict[str, Any] | None = None,
                 cache_size: int = 4):
        self.bundle = open_bundle(bundle, provider, self.COMPONENTS, type(self).__name__)
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
        return generate_masks(lambda feeds: self.bundle.run("sam_decoder", feeds), embeddings, original_hw,
                              input_hw, self.amg, self.sam_preprocessing["img_size"], self.mask_threshold)

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
