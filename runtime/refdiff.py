"""Ref-Diff predictor: zero-shot referring segmentation, composed of three stages usable alone.

    pred = RefDiffPredictor("engines/refdiff_toy")
    pred.set_image("scene.png")         # VAE latent, SAM automatic-mask proposals, CLIP embeddings of those
    res = pred.predict("the red circle on the left")
    res.mask                            # H x W bool, the best proposal
    many = pred.predict_many(["the red circle", "the star"])   # expressions batched through the UNet

Stages (each built from the bundle, numpy in / out):
- :class:`~.refdiff_localize.AttentionLocalizer` (sd_text, vae_encoder, unet_attn, DDIM): the image latent, and
  for each expression the target token's guided-DDIM cross-attention map ``c`` (H x W float32 in [0, 1]);
- :class:`~.refdiff_proposals.ProposalGenerator` (sam_encoder, sam_decoder): SAM automatic masks, cached per image;
- :class:`~.refdiff_scorer.ProposalScorer` (clip_text, clip_masked; clip_hard under hard_resize="shortest_side"):
  s = alpha s^G + (1 - alpha) s^D per proposal (the released preset: 0.7 hard + 0.3 soft + 0.05 s^G).
The predictor parses the expressions, picks the proposals (SAM masks and/or the weight-free thresholds 5%..95% of
``c``), keeps one :class:`ImageState` per image and reports warnings and timings.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle
from .images import load_image
from .masks import MaskSet
from .refdiff_localize import LOCALIZER_DEFAULTS, AttentionLocalizer
from .refdiff_options import check_options
from .refdiff_presets import DEFAULT_PRESET, PAPER, PRESET_NAMES, resolve_options
from .refdiff_released import filter_proposals, released_direction, released_subject, select_best
from .refdiff_proposals import ProposalGenerator
from .refdiff_scorer import BIAS_BRANCHES, SCORER_DEFAULTS, ProposalEmbeddings, ProposalScorer
from .refdiff_scores import THRESHOLDS, threshold_proposals
from .refer_text import ParsedExpression, _load_pipeline, parse_expression

PROPOSAL_SOURCES = ("sam", "thresholds", "both")
DEFAULTS = dict(PAPER)  # every option (the paper preset's values); presets: :mod:`.refdiff_presets`
__all__ = ["BIAS_BRANCHES", "DEFAULTS", "PRESET_NAMES", "PROPOSAL_SOURCES", "ImageState", "RefDiffPredictor",
           "RefDiffResult"]


@dataclass
class RefDiffResult:
    expression: str
    mask: np.ndarray  # H x W bool: the best-scoring proposal
    best: int  # index into proposals
    proposals: MaskSet  # the N proposals scored, held as boxes + crops: proposals[i] is H x W bool, .full() N x H x W
    sources: list[str]  # per proposal: "sam", "threshold" (or "image" when there was no proposal at all)
    scores: dict[str, np.ndarray]  # "generative" s^G, "discriminative" s^D, "total" s; N float32 each
    attention: np.ndarray  # H x W float32 in [0, 1]: the target token's normalized cross-attention c
    target_word: str
    target_token: int  # index in the 77-token row whose attention is read
    parsed: ParsedExpression
    truncated: bool = False  # the expression was cut at the SD tokenizer's context length
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    provider: str = ""

    def top(self, k: int = 3) -> list[int]:
        """Indices of the k best proposals, best first."""
        return [int(i) for i in np.argsort(-self.scores["total"])[:k]]


@dataclass(frozen=True)
class ImageState:
    """What :meth:`RefDiffPredictor.set_image` computed for one image, held once: ``image`` H x W x 3 uint8,
    ``latent`` 1 x C x h x w float32, ``sam`` N x H x W bool automatic masks (only the kept ones, unless
    ``filtered_proposals="released_multiply_by_zero"``), ``sam_keep`` N bool (which of ``sam`` passed the
    top-k / area filter), ``clip_memo`` the kept proposals' CLIP embeddings by (source, directions),
    ``timings_ms`` of the image stages."""

    image: np.ndarray
    latent: np.ndarray
    sam: np.ndarray
    clip_memo: dict[tuple, ProposalEmbeddings] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    sam_keep: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


class RefDiffPredictor:
    """``RefDiffPredictor(bundle, cache_dir="default", provider=None, preset="released", **overrides)``.
    ``preset``: "released" (kodenii/Ref-Diff as published, the default) or "paper" (the paper's formulas); the
    tables and every option that differs are in :mod:`.refdiff_presets`. Overrides of the preset and the
    manifest's ``method_config``: alpha, beta, guidance, steps, strength, single_t, proposals ("sam",
    "thresholds", "both"), hard_branch ("mask", "crop"), position_bias (the branch whose input is x * P:
    "hard" as the released code, "soft" as the paper's formula, "both"), soft_branch ("resized", or
    "released_native": CLIP at the image's own size, refused outside clip_masked's native range), hard_resize
    ("clip_input": crops squashed to CLIP's input; "shortest_side": shortest side to CLIP's size, aspect kept,
    in clip_hard, as released), parser (any spaCy pipeline name, or None for the parser-free rule), seed (the
    DDIM noise).

    ``localizer=``, ``generator=``, ``scorer=``: stages already built from the same bundle, used as they are
    (their options become the predictor's; an override that contradicts one is refused).

    Thread-safe: ``state = pred.encode(image)`` then ``pred.predict(expression, state=state)`` from any number
    of threads; ``set_image`` / ``predict`` keep one image per calling thread. Every option is checked here, at
    construction (:mod:`.refdiff_options`).

    ``progress``: None/False (quiet, the default), True (stage names and times on stderr as ``[refdiff] ...``
    lines, SAM point batches included), or a callable taking each message. ``memory``: ONNX Runtime's memory
    profile for the bundle it opens (:class:`~.bundle.Bundle`: "auto", the default, "low" or "speed").
    ``keep_sessions=False``: :meth:`encode` closes the image-stage sessions (VAE and SAM) once the image is
    encoded, so the UNet runs without them resident (one image per process, as ``edgeseg refer``; the next
    image opens them again)."""

    METHOD = "refdiff"

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, *, localizer: AttentionLocalizer | None = None,
                 generator: ProposalGenerator | None = None, scorer: ProposalScorer | None = None,
                 preset: str = DEFAULT_PRESET, progress: bool | Callable[[str], None] | None = None,
                 memory: str = "auto", keep_sessions: bool = True, **overrides: Any):
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise ValueError(f"progress must be None, a bool or a callable taking a message, got {progress!r}")
        self._say: Callable[[str], None] | None = (_stderr_line if progress is True else progress or None)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider, memory=memory)
        if self.bundle.method != self.METHOD:
            raise ValueError(f"bundle {self.bundle.path} holds method {self.bundle.method!r}; "
                             f"{type(self).__name__} needs a bundle of method {self.METHOD!r} "
                             f"(edgeseg export {self.METHOD} ...)")
        self.config: dict = self.bundle.manifest.get("method_config", {})
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown Ref-Diff option(s) {unknown}; known: {sorted(DEFAULTS)}")
        if preset not in PRESET_NAMES:
            raise ValueError(f"Ref-Diff preset {preset!r} is not one of {list(PRESET_NAMES)}")
        self.preset = preset
        self.options = check_options(resolve_options(preset, self.config, overrides))
        if self.options["proposals"] not in PROPOSAL_SOURCES:
            raise ValueError(f"proposals {self.options['proposals']!r} is not one of {PROPOSAL_SOURCES}")
        if self.options["position_bias"] not in BIAS_BRANCHES:
            raise ValueError(f"position_bias {self.options['position_bias']!r} is not one of {BIAS_BRANCHES}")
        self.localizer = (AttentionLocalizer(self.bundle, cache_dir, **self._options_of(LOCALIZER_DEFAULTS))
                          if localizer is None else self._adopt("localizer", AttentionLocalizer, localizer, overrides))
        self.generator = (ProposalGenerator(self.bundle, progress=self._batch_progress())
                          if generator is None else self._adopt("generator", ProposalGenerator, generator, overrides))
        self.scorer = (ProposalScorer(self.bundle, cache_dir, **self._options_of(SCORER_DEFAULTS))
                       if scorer is None else self._adopt("scorer", ProposalScorer, scorer, overrides))
        self._local = threading.local()  # .state: the ImageState set_image gave the calling thread
        self.keep_sessions = bool(keep_sessions)

    def _options_of(self, keys: dict[str, Any]) -> dict[str, Any]:
        return {k: self.options[k] for k in keys}

    def _adopt(self, name: str, kind: type, stage: Any, overrides: dict[str, Any]) -> Any:
        """A stage given by the caller: built from the same models, its options taken into :attr:`options`."""
        if not isinstance(stage, kind):
            raise TypeError(f"{name} must be a {kind.__name__} (edgeseg.runtime.{kind.__module__.split('.')[-1]}), "
                            f"got {type(stage).__name__}")
        for c in stage.COMPONENTS:
            if stage.bundle.component_hash(c) != self.bundle.component_hash(c):
                raise ValueError(f"the {name} was built from bundle {stage.bundle.path}, whose {c!r} differs from "
                                 f"that of {self.bundle.path}: build the {name} from the predictor's bundle")
        for k, v in getattr(stage, "options", {}).items():
            if k in overrides and overrides[k] != v:
                raise ValueError(f"option {k}={overrides[k]!r} contradicts the given {name}'s {k}={v!r}: set it "
                                 f"on the {name}, or drop the override")
            self.options[k] = v
        return stage

    # ------------------------------------------------------------------ image phase
    @property
    def state(self) -> ImageState | None:
        """The calling thread's current image (set by :meth:`set_image`), or None."""
        return getattr(self._local, "state", None)

    def set_image(self, image: Any) -> ImageState:
        """:meth:`encode` an image and keep it as the calling thread's current image; returns the state."""
        state = self.encode(image)
        self._local.state = state
        return state

    def encode(self, image: Any) -> ImageState:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path): VAE latent, SAM embedding and automatic
        masks, and the CLIP embeddings of those masks (position bias off). Thread safety: the state is the
        caller's; ``predict(..., state=state)`` from any number of threads shares nothing mutable but the
        per-image memo of proposal embeddings (filled idempotently)."""
        t0 = time.perf_counter()
        img = load_image(image)
        x_vae = self.localizer.preprocess(img)
        t1 = time.perf_counter()
        self._note(f"VAE encoder ({img.shape[1]}x{img.shape[0]} image) ...")
        latent = self.localizer.encode_input(x_vae)
        t2 = time.perf_counter()
        self._note(f"VAE encoder {t2 - t1:.1f} s; SAM encoder + automatic masks ...")
        sam = self.generator(img)
        t3 = time.perf_counter()
        self._note(f"SAM encoder {sam.timings_ms['sam_encoder'] / 1e3:.1f} s, automatic masks "
                   f"{sam.timings_ms['sam_proposals'] / 1e3:.1f} s ({len(sam)} masks"
                   f"{', cached' if sam.cached else ''}); CLIP embeddings of the proposals ...")
        memo: dict[tuple, ProposalEmbeddings] = {}
        o = self.options
        masks = sam.masks
        keep = filter_proposals(masks, o["topk"], o["min_area"], o["min_area_fraction"])
        if o["filtered_proposals"] == "exclude":
            masks, keep = masks[keep], keep[keep]
        if o["proposals"] != "thresholds" and keep.any():
            self.scorer.embed(img, masks[keep], (), memo, key=("sam", ()))
        t4 = time.perf_counter()
        self._note(f"CLIP proposals {t4 - t3:.1f} s ({int(keep.sum())} kept)")
        if not self.keep_sessions:
            for name in ("vae_encoder", *self.generator.COMPONENTS):  # image stages only: text and UNet stay
                self.bundle.close(name)
        return ImageState(img, latent, masks, memo, sam_keep=keep, timings_ms=
                                {"preprocess": (t1 - t0) * 1e3, "vae_encoder": (t2 - t1) * 1e3,
                                 "sam_encoder": sam.timings_ms["sam_encoder"],
                                 "sam_proposals": sam.timings_ms["sam_proposals"],
                                 "clip_proposals": (t4 - t3) * 1e3})

    def _require_image(self, state: ImageState | None = None) -> ImageState:
        state = state if state is not None else self.state
        if state is None:
            raise RuntimeError("no image set: call set_image(image) before predict(labels)")
        if not isinstance(state, ImageState):
            raise ValueError(f"state must be the ImageState that encode(image) returns, got {type(state).__name__}")
        return state

    # ------------------------------------------------------------------ expression phase
    def predict(self, expression: str, proposals: str | None = None, *,
                state: ImageState | None = None) -> RefDiffResult:
        """Segment the object ``expression`` refers to in ``state``'s image (from :meth:`encode`), else in the
        calling thread's :meth:`set_image` image."""
        if not isinstance(expression, str):
            raise ValueError(f"expression must be a str, got {type(expression).__name__}: {expression!r:.60}")
        return self.predict_many([expression], proposals, state=state)[0]

    def segment(self, image: Any, expression: str, proposals: str | None = None) -> RefDiffResult:
        """One shot: :meth:`set_image` then :meth:`predict`."""
        return self.predict(expression, proposals, state=self.set_image(image))

    def predict_many(self, expressions: list[str], proposals: str | None = None, *,
                     state: ImageState | None = None) -> list[RefDiffResult]:
        """:meth:`predict` for several expressions, batched through the text encoders and the UNet."""
        state = self._require_image(state)
        if isinstance(expressions, str) or not isinstance(expressions, (list, tuple)) or not expressions:
            raise ValueError(f"expressions must be a non-empty list of str; got {expressions!r:.80}")
        source = proposals or self.options["proposals"]
        if source not in PROPOSAL_SOURCES:
            raise ValueError(f"proposals {source!r} is not one of {PROPOSAL_SOURCES}")
        t0 = time.perf_counter()
        parsed = [self.parse(e) for e in expressions]
        targets = self.localizer.target_tokens(parsed)
        states = self.localizer.text_states(self.localizer.prompts(parsed))
        refs = self.scorer.text_embeddings(parsed)
        t1 = time.perf_counter()
        o = self.options
        plan = (f"single t={o['single_t']}" if o.get("single_t") is not None
                else f"DDIM {o['steps']} steps x strength {o['strength']}")
        self._note(f"text {t1 - t0:.1f} s; UNet cross-attention, {len(parsed)} expression(s), {plan} ...")
        maps = self.localizer.attention(state.latent, states, targets.indices, state.size)
        t2 = time.perf_counter()
        self._note(f"UNet {t2 - t1:.1f} s; scoring the proposals ...")
        out = [self._score(state, p, tok, c, r, source) for p, tok, c, r in zip(parsed, targets.indices, maps, refs)]
        self._note(f"scoring {time.perf_counter() - t2:.1f} s")
        per = 1.0 / len(parsed)
        provider = self.bundle.providers_used.get("unet_attn", "")
        for res, truncated, gone in zip(out, targets.truncated, targets.lost):
            res.truncated = truncated
            if truncated:
                res.warnings.append(f"expression cut at {self.localizer.sd_tokenizer.context_length} tokens")
            if gone:
                res.warnings.append(f"target word {res.target_word!r} lies past the cut; its attention is read at "
                                    f"the last kept token instead: shorten the expression")
            res.timings_ms = dict(state.timings_ms, text=(t1 - t0) * 1e3 * per, unet=(t2 - t1) * 1e3 * per,
                                  score=res.timings_ms["score"])
            res.provider = provider
        return out

    def _score(self, state: ImageState, p: ParsedExpression, token: int, c: np.ndarray, r: np.ndarray,
               source: str) -> RefDiffResult:
        """Pick the proposals of ``source`` for one expression and score them (c: H x W, r: D unit norm)."""
        t0 = time.perf_counter()
        warnings = [] if p.has_noun else [p.message]
        directions = tuple(p.directions)
        keep = state.sam_keep
        if keep is None or len(keep) != len(state.sam):  # a state built by hand: every mask counts as kept
            keep = np.ones(len(state.sam), bool)
        groups = []  # (masks, source, key of the memoized CLIP embeddings)
        if source in ("sam", "both") and keep.any():
            groups.append((state.sam[keep], "sam", ("sam", directions)))
        elif (source == "sam" and len(state.sam) and self.options["filtered_proposals"] == "released_multiply_by_zero"):
            warnings.append("every SAM proposal was filtered out; as released, all score 0 and the first wins")
            zero = np.zeros(len(state.sam), np.float32)
            return RefDiffResult(p.text, state.sam[0].copy(), 0, MaskSet.from_masks(state.sam), ["sam"] * len(zero),
                                 {"generative": zero, "discriminative": zero, "total": zero}, c, p.target_word,
                                 token, p, warnings=warnings, timings_ms={"score": (time.perf_counter() - t0) * 1e3})
        if source in ("thresholds", "both") or not groups:
            if source == "sam":
                warnings.append("no SAM proposal survived filtering; using the threshold proposals of c")
            groups.append((threshold_proposals(c, tuple(self.config.get("thresholds", THRESHOLDS))), "threshold", None))
        if not sum(len(m) for m, _, _ in groups):  # a flat attention map and no SAM mask: nothing to score
            warnings.append("no proposal at all (no SAM mask, flat attention map): the whole image is returned")
            groups = [(np.ones((1, *state.size), bool), "image", None)]
        groups = [g for g in groups if len(g[0])]
        srcs = [src for m, src, _ in groups for _ in range(len(m))]
        emb = ProposalEmbeddings.concat([self.scorer.embed(state.image, m, directions, state.clip_memo, key)
                                         for m, _, key in groups])
        masks = np.concatenate([m for m, _, _ in groups])
        scores = self.scorer.scores(c, masks, emb, r)
        best = scores.best
        dropped = groups[0][1] == "sam" and not keep.all()
        if dropped and self.options["filtered_proposals"] == "released_multiply_by_zero":
            masks, srcs, scores, best = self._with_dropped(state.sam, keep, masks, srcs, scores.as_dict())
        else:
            scores = scores.as_dict()
        return RefDiffResult(p.text, masks[best].copy(), best, MaskSet.from_masks(masks), srcs, scores, c,
                             p.target_word, token, p, warnings=warnings,
                             timings_ms={"score": (time.perf_counter() - t0) * 1e3})

    @staticmethod
    def _with_dropped(sam: np.ndarray, keep: np.ndarray, masks: np.ndarray, srcs: list[str],
                      scores: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str], dict[str, np.ndarray], int]:
        """The released ``score * filtered``: every SAM mask back in its place, the dropped ones (never scored)
        at 0 in every score, then the plain argmax over all (:func:`select_best` "released_multiply_by_zero")."""
        k = int(keep.sum())
        full = np.concatenate([sam, masks[k:]])
        mask_full = np.concatenate([keep, np.ones(len(masks) - k, bool)])
        out = {}
        for name, v in scores.items():
            f = np.zeros(len(full), np.float32)
            f[np.flatnonzero(mask_full)] = v
            out[name] = f
        names = ["sam"] * len(sam) + srcs[k:]
        return full, names, out, select_best(out["total"], mask_full, "released_multiply_by_zero")

    def _note(self, message: str) -> None:
        """One progress message (stage name, time) to the ``progress`` callback, if any."""
        if self._say is not None:
            self._say(message)

    def _batch_progress(self) -> Any:
        """The SAM point-batch progress for :class:`ProposalGenerator`: True (its own stderr line) when this
        predictor prints to stderr, a ``(done, total)`` adapter onto a message callback, None when quiet."""
        say = self._say
        if say is None or say is _stderr_line:
            return say is not None or None
        return lambda done, total: say(f"SAM automatic masks: {done}/{total} point batches")

    def parse(self, expression: str) -> ParsedExpression:
        """The expression parsed under the preset's ``target_rule`` and ``position_rule``: ``released_subject``
        takes the first token whose dependency is ROOT or a subject (any part of speech; target phrase = that
        word), ``released_substring`` the direction "left" if the substring occurs, else "right", else none."""
        o = self.options
        p = parse_expression(expression, o["parser"])
        if o["target_rule"] == "released_subject" and o["parser"] is not None:
            nlp = _load_pipeline(o["parser"])
            if nlp is not None:
                word = released_subject(nlp(p.text), p.text)
                start = p.text.find(word)
                p = replace(p, target_word=word, target_char_span=(start, start + len(word)), target_phrase=word)
        if o["position_rule"] == "released_substring":
            p = replace(p, directions=released_direction(p.text))
        return p


def _stderr_line(message: str) -> None:
    """``progress=True``: one ``[refdiff] <message>`` line on stderr."""
    print(f"[refdiff] {message}", file=sys.stderr, flush=True)
