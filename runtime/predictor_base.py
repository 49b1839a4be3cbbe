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
from typing import Any, Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .images import TILING, canvas, load_image, preprocess, recipe_of, resize_maps
from .resample import argmax_resized, resize_linear
from .sliding import SlidingWindow
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
    image (read-only); ``size``: (H, W) of the image given; ``timings_ms``: preprocess and encoder times.
    ``tiling``: set when the image was encoded in sliding windows (:mod:`.sliding`): then ``encoded`` holds one
    batch row per window (in ``tiling.boxes`` order) and ``input`` is the padded canvas the windows were cut
    from."""

    encoded: Mapping[str, np.ndarray]
    input: np.ndarray
    size: tuple[int, int]
    timings_ms: Mapping[str, float]
    tiling: SlidingWindow | None = None


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

    def encode(self, image: Any, *, window: int | Sequence[int] | None = None,
               stride: int | Sequence[int] | None = None) -> ImageState:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path) once for any number of predicts.

        ``window`` / ``stride`` (pixels of the prepared image): sliding-window inference (:meth:`tiling`). The
        default (None) is the bundle's recipe: lang-seg's and TCL's official windows for their recipes, one
        resized image otherwise; ``window=0`` forces one resized image."""
        t0 = time.perf_counter()
        img = load_image(image)
        prep = self.bundle.preprocessing
        plan = self.tiling(img.shape[:2], window, stride)
        if plan is None:
            x = preprocess(img, prep)
            t1 = time.perf_counter()
            out = self.bundle.run(self.ENCODER, {"image": x})
        else:
            x = plan.pad_canvas(canvas(img, prep), self._pad_value())
            tiles = plan.cut(x, self._pad_value())
            t1 = time.perf_counter()
            out = self._run_batched(self.ENCODER, {"image": tiles})
        t2 = time.perf_counter()
        return ImageState({k: _frozen(v) for k, v in out.items()}, _frozen(x), tuple(img.shape[:2]),
                          {"preprocess": (t1 - t0) * 1e3, "encoder": (t2 - t1) * 1e3}, plan)

    # ------------------------------------------------------------------------------------------ sliding windows
    def tiling(self, size: tuple[int, int], window: int | Sequence[int] | None = None,
               stride: int | Sequence[int] | None = None) -> SlidingWindow | None:
        """The windows an image of ``size`` (H, W) is encoded in, or None for one resized image.

        ``window`` None: the recipe's (``preprocessing.window`` / ``stride`` of lseg-encoding and mmseg-rescale
        bundles: 480 / 320 after the long side goes to 520, 448 / 224 after the short side goes to 448); other
        recipes: None. ``window`` 0: None. Else the window must be the encoder's input size (the graph's fixed
        shape); ``stride`` defaults to the recipe's, else half the window."""
        prep = self.bundle.preprocessing
        recipe = recipe_of(prep)
        off = isinstance(window, (int, np.integer)) and not isinstance(window, bool) and window == 0
        if window is None and "window" in prep:
            window = prep["window"]
        if window is None or off:
            if stride is not None:
                raise ValueError(f"stride {stride!r} given without sliding windows (this bundle encodes one resized "
                                 f"image {'when window=0' if off else 'by default'}); pass "
                                 f"window={prep['image_size'][0]} too, or drop the stride")
            return None
        mode = TILING[recipe][0]
        plan = SlidingWindow.plan(self._canvas_size(size), window,
                                  stride if stride is not None else prep.get("stride"), mode)
        if plan.window != tuple(prep["image_size"]):
            raise ValueError(f"window {list(plan.window)} differs from this bundle's encoder input "
                             f"{list(prep['image_size'])} (a fixed-size graph); pass window={prep['image_size'][0]} "
                             f"(or 0 for one resized image), or re-export the bundle at that size")
        return plan

    def _canvas_size(self, size: tuple[int, int]) -> tuple[int, int]:
        from .images import lseg_size, rescale_size

        prep = self.bundle.preprocessing
        recipe = recipe_of(prep)
        if recipe == "lseg-encoding":
            return lseg_size(size, prep["base_size"])
        if recipe == "mmseg-rescale":
            return rescale_size(size, tuple(prep["scale"]))
        return tuple(size)

    def _pad_value(self) -> np.ndarray:
        """What partial windows are padded with (normalized): black (-mean/std) for lang-seg's pad tiling, the
        normalized zero otherwise."""
        prep = self.bundle.preprocessing
        if TILING[recipe_of(prep)][0] == "pad":
            return (-np.asarray(prep["mean"], np.float32) / np.asarray(prep["std"], np.float32)).astype(np.float32)
        return np.zeros(3, np.float32)

    def _run_batched(self, component: str, feeds: dict[str, np.ndarray],
                     fixed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run ``component`` on the rows of ``feeds`` in chunks of at most its manifest's max batch (of the first
        input), ``fixed`` inputs (text embeddings) passed whole to every chunk; outputs concatenated."""
        first = self.bundle.spec(component).inputs[0]
        limit = first.max[0] if first.max and isinstance(first.shape[0], str) else 1
        n = len(next(iter(feeds.values())))
        outs: dict[str, list[np.ndarray]] = {}
        for s in range(0, n, limit):
            chunk = {k: v[s:s + limit] for k, v in feeds.items()}
            for k, v in self.bundle.run(component, dict(chunk, **(fixed or {}))).items():
                outs.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in outs.items()}

    def _tiled_to_image_size(self, maps: np.ndarray, st: ImageState, full: bool, background: float | None = None,
                             probabilities: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Blended C x h x w canvas maps -> (H x W int32 label map, probabilities): the argmax of the maps resized
        as the recipe's reference resizes them (bilinear, align_corners True for lseg-encoding, else False), one
        label at a time; with ``background``, a constant channel of that value is appended (label C).
        ``probabilities`` (a function of the maps, e.g. softmax) gives the returned probabilities: at the canvas
        resolution, or at H x W when ``full`` (refused above MAX_FULL_PROBABILITIES_BYTES)."""
        align = TILING[recipe_of(self.bundle.preprocessing)][1]
        to_probs = probabilities or (lambda m: m)
        C, (H, W) = maps.shape[0], tuple(st.size)
        extra = 0 if background is None else 1
        if full:
            need = (C + extra) * H * W * 4
            if need > MAX_FULL_PROBABILITIES_BYTES:
                raise ValueError(f"full-resolution probabilities for {C} labels at {H}x{W} need "
                                 f"{need / 2**30:.1f} GiB (limit {MAX_FULL_PROBABILITIES_BYTES / 2**30:.0f} GiB); use "
                                 f"fewer labels, a smaller image, or the default low-resolution probabilities")
            probs = to_probs(resize_linear(maps, (H, W), align)).astype(np.float32)
        else:
            probs = to_probs(maps).astype(np.float32)
        label_map = argmax_resized(maps, (H, W), align, background)
        if extra:
            probs = np.concatenate([probs, np.full((1,) + probs.shape[1:], background, np.float32)])
        return label_map, probs

    def encode_many(self, images: Sequence[Any]) -> list[ImageState]:
        """:meth:`encode` for several images, the encoder run on batches: preprocessed images of one shape are
        stacked (N x 3 x H' x W', at most the manifest's max batch of the encoder's ``image`` input per run).
        Each state equals what :meth:`encode` gives for that image; its ``timings_ms`` hold its own preprocess
        time and its share of the batched encoder time. (Used by ``edgeseg serve`` for dynamically batched
        requests.) Images the bundle encodes in sliding windows go through :meth:`encode` one by one (their
        windows are batched there)."""
        t0 = time.perf_counter()
        imgs = [load_image(im) for im in images]
        tiling = getattr(self, "tiling", None)
        states: list[ImageState | None] = [None] * len(imgs)
        xs: dict[int, np.ndarray] = {}
        for i, img in enumerate(imgs):
            if tiling is not None and tiling(img.shape[:2]) is not None:
                states[i] = self.encode(img)
            else:
                xs[i] = preprocess(img, self.bundle.preprocessing)
        pre_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(xs))
        spec = self.bundle.spec(self.ENCODER).input("image")
        limit = spec.max[0] if spec.max and isinstance(spec.shape[0], str) else 1
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in xs.items():
            groups.setdefault(x.shape, []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), limit):
                chunk = idx[s:s + limit]
                t1 = time.perf_counter()
                out = self.bundle.run(self.ENCODER, {"image": np.concatenate([xs[i] for i in chunk])})
                enc_ms = (time.perf_counter() - t1) * 1e3 / len(chunk)
                for j, i in enumerate(chunk):
                    states[i] = ImageState({k: _frozen(v[j:j + 1]) for k, v in out.items()}, _frozen(xs[i]),
                                           tuple(imgs[i].shape[:2]), {"preprocess": pre_ms, "encoder": enc_ms})
        return [s for s in states if s is not None]

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

    def segment(self, image: Any, labels: Any, *, window: int | Sequence[int] | None = None,
                stride: int | Sequence[int] | None = None, **kwargs: Any):
        """One shot: :meth:`set_image` (the calling thread's image; ``window`` / ``stride`` as :meth:`encode`)
        then :meth:`predict` on it."""
        state = self.encode(image, window=window, stride=stride)
        self._local.state = state
        return self.predict(labels, state=state, **kwargs)
