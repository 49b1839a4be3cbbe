"""Ref-Diff's proposal scorer as a stage of its own: CLIP embeddings of proposals (``clip_masked``, and
``clip_hard`` for ``hard_resize="shortest_side"``), the expression's text embedding (``clip_text``) and the scores
of :mod:`edgeseg.runtime.refdiff_scores`.

    scorer = ProposalScorer(bundle)                       # alpha, beta, hard_branch, position_bias options
    p = parse_expression("the red circle on the left")
    scores = scorer.score(image, c, masks, p)             # ProposalScores: generative, discriminative, total (N)
    scores.best                                           # index of the best proposal

Discriminative branch: v = beta f_M(x * P) + (1 - beta) f(x * M), where the soft branch f_M reads CLIP's patch
tokens inside the proposal's patch mask and the hard branch f sees x * M (``hard_branch="mask"``) or the box crop
(``"crop"``); the position bias P of the expression's direction words multiplies the input of the branch(es) named
by ``position_bias`` ("hard" as the released code, "soft" as the paper's formula, "both"). s^D = cos(v, r) with r
the mean of the unit-norm embeddings of the expression and its target phrase. s = alpha s^G + (1 - alpha) s^D.

Soft branch (``soft_branch``): ``"resized"`` (the paper preset) runs f_M on the image resized to CLIP's input with
>= 50 %-coverage patch masks and the original class token visible; ``"released_native"`` (the released preset,
kodenii/Ref-Diff ``get_clipsoft``) runs CLIP on the whole image at its own size (the bundle's mean/std, no
resize; position embeddings interpolated in-graph), one class token per proposal seeing only its patches, with
the masks nearest-downsampled to the H // stride x W // stride patch grid (:func:`released_native_masks`). An
image outside ``clip_masked``'s ``native_image`` range (manifest min/max, e.g. 32..1344 px per side for a
224-px ViT-B/16) is refused with a one-line ValueError, never rescaled. Both branches come from one
``clip_masked`` call: under "resized" the native inputs get their cheapest valid feed (min-size zeros, one
proposal); under "released_native" the resized branch gets the first proposal of each call only (its output is
not read; real data, so an INT8 calibration recorded from the pipeline sees real data on both). Bundles exported
before stop 21 share one ``proposals`` axis across the branches (ONNX Runtime warns on mismatched sizes): there
every branch gets all N proposals of the call, as before.

Hard-branch resize (``hard_resize``): ``"clip_input"`` (the paper preset) squashes each hard-branch crop to CLIP's
input H x W (``clip_masked``'s ``crops``); ``"shortest_side"`` (the released preset, ``get_cliphard``'s
``T.Resize(224)``) resizes its shortest side to the bundle's CLIP image size (``method_config.clip_hard.short_side``:
224 for ViT-B/16, 96 for the toy CLIP), the other side ``int(size * long / short)``, PIL bilinear
(:func:`~.refdiff_released.resize_shortest`), and embeds it with ``clip_hard`` (position embeddings interpolated
for its grid), one call per group of crops of one size. The released code runs CLIP at any size; ``clip_hard``'s
profile stops at ``max`` per side (6 x the CLIP size: 1344 px for ViT-B/16, 576 for the toy), so a crop whose
long side would pass it (an aspect ratio over 6:1) is scaled, aspect kept, so that the long side fits the max
(:func:`shortest_side_crop`); a crop thinner still than ``max / min`` (42:1 for ViT-B/16) then gets its short side
raised to ``min`` (2 patches). ``clip_masked``'s ``crops`` then get the first squashed crop of each call only
(its graph computes every branch whatever is read; N crops on bundles exported before stop 21, whose branches
share one proposal axis). A bundle without ``clip_hard`` is refused
for ``"shortest_side"`` with a one-line ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from .bundle import Bundle
from .images import preprocess
from .refdiff_localize import open_bundle, stage_options
from .refdiff_scores import discriminative_scores, generative_scores, masked_crops, patch_masks
from .refdiff_released import (RELEASED_WEIGHTS, biased_image, hard_crop, released_generative_scores,
                               released_native_masks, released_position_bias, released_total_scores,
                               resize_shortest)
from .refer_text import ParsedExpression, position_bias
from .text import TextEncoder

# The scorer's options (the manifest's method_config overrides them, keyword arguments override both).
SCORER_DEFAULTS: dict[str, Any] = {"alpha": 0.1, "beta": 0.3, "hard_branch": "mask", "position_bias": "hard",
                                   "position_rule": "words", "score_rule": "paper", "soft_branch": "resized",
                                   "hard_resize": "clip_input", **RELEASED_WEIGHTS}
# Where P multiplies the image: the released code's hard branch (default, as its DDIM settings), the paper's
# formula v = beta f_M(x*P) + (1 - beta) f(x*M) (soft), or both.
BIAS_BRANCHES = ("hard", "soft", "both")
# The soft branch's input: the image resized to CLIP's size (paper), or at its native size as released.
SOFT_BRANCHES = ("resized", "released_native")
# The hard branch's crops: squashed to CLIP's input (paper), or shortest side to CLIP's size, aspect kept (released).
HARD_RESIZES = ("clip_input", "shortest_side")
HARD = "clip_hard"  # the component of hard_resize="shortest_side"


def shortest_side_crop(crop: np.ndarray, short: int, lo: tuple[int, int], hi: tuple[int, int]) -> np.ndarray:
    """h x w x 3 uint8 -> H' x W' x 3 uint8 for ``clip_hard``: :func:`resize_shortest` to ``short`` (torchvision's
    ``Resize(short)``) when that fits ``hi`` (H, W); else scaled by ``min(hi / (h, w))`` (aspect kept, sides
    truncated, PIL bilinear), each side then raised to at least ``lo`` (only crops thinner than hi / lo)."""
    out = resize_shortest(crop, short)
    if out.shape[0] <= hi[0] and out.shape[1] <= hi[1]:
        return out
    from PIL import Image

    h, w = crop.shape[:2]
    f = min(hi[0] / h, hi[1] / w)
    nh, nw = max(int(h * f + 1e-6), lo[0]), max(int(w * f + 1e-6), lo[1])
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((nw, nh), Image.BILINEAR))


@dataclass
class ProposalEmbeddings:
    """CLIP embeddings of N proposals, unit norm: ``masked`` N x D (soft branch f_M(x * P)) and ``crop`` N x D
    (hard branch f(x * M) or of the box crop)."""

    masked: np.ndarray
    crop: np.ndarray

    def __len__(self) -> int:
        return len(self.masked)

    @staticmethod
    def concat(parts: Sequence["ProposalEmbeddings"]) -> "ProposalEmbeddings":
        """The embeddings of several proposal groups, in order."""
        return ProposalEmbeddings(np.concatenate([p.masked for p in parts]), np.concatenate([p.crop for p in parts]))


@dataclass
class ProposalScores:
    """Per-proposal scores, N float32 each: ``generative`` s^G, ``discriminative`` s^D, ``total`` s."""

    generative: np.ndarray
    discriminative: np.ndarray
    total: np.ndarray

    @property
    def best(self) -> int:
        """Index of the best-scoring proposal (the first of equal ones)."""
        return int(np.argmax(self.total))

    def as_dict(self) -> dict[str, np.ndarray]:
        """{"generative", "discriminative", "total"}: the form of ``RefDiffResult.scores``."""
        return {"generative": self.generative, "discriminative": self.discriminative, "total": self.total}


class ProposalScorer:
    """``ProposalScorer(bundle, cache_dir="default", provider=None, **options)``: scores of proposals for a parsed
    expression. Options: alpha, beta, hard_branch ("mask", "crop", "masked_box"), position_bias
    (:data:`BIAS_BRANCHES`), soft_branch (:data:`SOFT_BRANCHES`), hard_resize (:data:`HARD_RESIZES`),
    position_rule, score_rule and the released weights; defaults :data:`SCORER_DEFAULTS`, overridden by the
    bundle's ``method_config``, then by keyword arguments. :attr:`COMPONENTS` of an instance adds ``clip_hard``
    when hard_resize="shortest_side" (the only case that runs it).

    Text embeddings go through the persistent text cache (``cache_dir``: a folder, "default" or None); proposal
    embeddings are memoized in a dict the caller keeps per image (``memo`` / ``key`` of :meth:`embed`)."""

    COMPONENTS = ("clip_text", "clip_masked")  # the bundle components this stage runs

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, **options: Any):
        self.bundle = open_bundle(bundle, provider, self.COMPONENTS, type(self).__name__)
        self.config: dict = self.bundle.manifest.get("method_config", {})
        self.options = stage_options(type(self).__name__, SCORER_DEFAULTS, self.config, options)
        if self.options["position_bias"] not in BIAS_BRANCHES:
            raise ValueError(f"position_bias {self.options['position_bias']!r} is not one of {BIAS_BRANCHES}")
        spec = self.bundle.spec("clip_masked")
        self._native = "native_image" in {t.name for t in spec.inputs}
        # bundles exported since stop 21 name the three branches' proposal axes apart (proposals, crops,
        # native_proposals): a branch whose output is not read then gets one proposal a call, not N
        axis = {t.name: t.shape[0] for t in spec.inputs}
        self._apart = all(k in axis and axis[k] != axis["patch_masks"] for k in ("crops", "native_masks"))
        if self.options["soft_branch"] == "released_native" and not self._native:
            raise ValueError(f"bundle {self.bundle.path} has no native_image input in clip_masked (exported before "
                             f"soft_branch='released_native' existed): re-export it, or pass soft_branch='resized'")
        if self._native and not self.config.get("clip_masked", {}).get("native_stride"):
            raise ValueError(f"bundle {self.bundle.path}: clip_masked has native inputs but method_config lacks "
                             f"clip_masked.native_stride; re-export the bundle")
        if self.options["hard_resize"] == "shortest_side":
            if HARD not in self.bundle.components:
                raise ValueError(f"bundle {self.bundle.path} has no clip_hard component (exported before "
                                 f"hard_resize='shortest_side' existed): re-export it (edgeseg export refdiff ...), "
                                 f"or pass hard_resize='clip_input'")
            if not self.config.get(HARD, {}).get("short_side"):
                raise ValueError(f"bundle {self.bundle.path}: it has clip_hard but method_config lacks "
                                 f"clip_hard.short_side; re-export the bundle")
            self.COMPONENTS = (*type(self).COMPONENTS, HARD)
        self.text = TextEncoder(self.bundle, cache_dir)

    # ------------------------------------------------------------------ text
    def text_embeddings(self, parsed: Sequence[ParsedExpression]) -> np.ndarray:
        """N parsed expressions -> N x D float32 unit-norm r: the mean of the CLIP embeddings of the expression
        and of its target phrase (one batched, cached ``clip_text`` call for all); ``score_rule="released"``:
        N x 2 x D, the unit-norm sentence embedding t and target-phrase embedding k, unmixed."""
        texts = self.text.embed([s for p in parsed for s in (p.text, p.target_phrase)])
        if self.options["score_rule"] == "released":
            return texts.reshape(len(parsed), 2, -1).astype(np.float32)
        out = []
        for t in texts.reshape(len(parsed), 2, -1):
            r = t.mean(0)
            out.append(r / max(float(np.linalg.norm(r)), 1e-12))
        return np.stack(out)

    # ------------------------------------------------------------------ proposals
    def native_inputs(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The released soft branch's feeds: ``image`` H x W x 3 uint8 -> 1 x 3 x H x W float32 (/255, the
        bundle's mean/std, no resize) and ``masks`` N x H x W bool -> N x (H // s) x (W // s) float32 nearest
        samples. An image outside the manifest's native_image range (a large photo) is first scaled, aspect
        kept, by the one factor that brings it inside (BICUBIC; its masks nearest): the released code, written
        for RefCOCO's ~640 x 480 images, has no such bound. ValueError when no single factor fits (an extreme
        aspect ratio)."""
        t = self.bundle.spec("clip_masked").input("native_image")
        h, w = image.shape[:2]
        (lo_h, lo_w), (hi_h, hi_w) = t.min[2:], t.max[2:]
        if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w):
            f = min(hi_h / h, hi_w / w) if (h > hi_h or w > hi_w) else max(lo_h / h, lo_w / w)
            nh, nw = max(1, int(h * f + 1e-6)), max(1, int(w * f + 1e-6))  # the bound side lands on it exactly
            if not (lo_h <= nh <= hi_h and lo_w <= nw <= hi_w):
                raise ValueError(f"image {h}x{w} cannot be scaled into clip_masked's native range {lo_h}x{lo_w} to "
                                 f"{hi_h}x{hi_w} (soft_branch='released_native' runs CLIP at the image's own size) "
                                 f"with its aspect ratio kept: crop it, or use soft_branch='resized'")
            from PIL import Image

            image = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((nw, nh), Image.BICUBIC))
            rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
            cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
            masks = np.asarray(masks)[:, rows][:, :, cols]
        prep = self.bundle.preprocessing
        x = (image[..., :3].astype(np.float32) / 255.0 - np.asarray(prep["mean"], np.float32)) \
            / np.asarray(prep["std"], np.float32)
        stride = tuple(self.config["clip_masked"]["native_stride"])
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), released_native_masks(masks, stride)

    def _unused_native(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The cheapest valid native feeds (min size, zeros) for calls whose native output is not read."""
        t = self.bundle.spec("clip_masked").input("native_masks")
        lo = self.bundle.spec("clip_masked").input("native_image").min
        return np.zeros(lo, np.float32), np.zeros((n, *t.min[1:]), np.float32)

    def hard_embeddings(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``hard_resize="shortest_side"``: N hard-branch crops (h x w x 3 uint8) -> N x D float32 unit norm from
        ``clip_hard``, each at :func:`shortest_side_crop` size (/255, the bundle's mean/std), one call per group of
        equal sizes (at most the profile's max crops each)."""
        t = self.bundle.spec(HARD).input("crops")
        lo, hi, most = tuple(t.min[2:]), tuple(t.max[2:]), int(t.max[0])
        short, prep = int(self.config[HARD]["short_side"]), self.bundle.preprocessing
        mean, std = np.asarray(prep["mean"], np.float32), np.asarray(prep["std"], np.float32)
        feeds, groups = [], {}
        for i, c in enumerate(crops):
            x = (shortest_side_crop(c, short, lo, hi)[..., :3].astype(np.float32) / 255.0 - mean) / std
            x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # 1 x 3 x H x W
            feeds.append(x)
            groups.setdefault(x.shape[2:], []).append(i)
        out: list[np.ndarray | None] = [None] * len(feeds)
        for idx in groups.values():
            for s in range(0, len(idx), most):
                part = idx[s:s + most]
                emb = self.bundle.run(HARD, {"crops": np.concatenate([feeds[j] for j in part])})["hard_embeds"]
                for j, e in zip(part, emb):
                    out[j] = e
        return np.stack(out).astype(np.float32)

    def embed(self, image: np.ndarray, masks: np.ndarray, directions: Sequence[str] = (),
              memo: dict | None = None, key: Hashable | None = None) -> ProposalEmbeddings:
        """CLIP embeddings of N proposals ``masks`` (N x H x W bool) of ``image`` (H x W x 3 uint8), the
        position bias P of ``directions`` applied to the branch(es) ``position_bias`` names. With a ``memo``
        dict and a ``key`` (e.g. ``("sam", tuple(directions))``) the result is looked up / stored there: keep
        one memo per image, since the key does not see the pixels."""
        if memo is not None and key is not None and key in memo:
            return memo[key]
        if not len(masks):
            raise ValueError("no proposal to embed: give at least one H x W mask")
        prep = self.bundle.preprocessing
        spec = self.bundle.spec("clip_masked").input("patch_masks")
        grid, limit = tuple(spec.shape[1:]), spec.max[0]
        where = self.options["position_bias"]
        if self.options["position_rule"] == "released_substring":  # float64 ramp, as released
            ramp = released_position_bias(" ".join(directions), *image.shape[:2])
        else:
            ramp = position_bias(list(directions), *image.shape[:2])
        biased = np.clip(biased_image(image, ramp), 0, 255).astype(np.uint8)
        soft_src = biased if where in ("soft", "both") else image
        x = preprocess(soft_src, prep)
        pm = patch_masks(masks, grid)  # type: ignore[arg-type]
        nat = self.native_inputs(soft_src, masks) if self.options["soft_branch"] == "released_native" else None
        if self.options["hard_branch"] == "masked_box":  # (x * P) * M cut to M's box, truncated to uint8
            src = biased_image(image, ramp) if where in ("hard", "both") else image
            crops = [hard_crop(src, m) for m in masks]
        else:
            crops = masked_crops(biased if where in ("hard", "both") else image, masks, self.options["hard_branch"])
        soft, hard = [], []
        shortest = self.options["hard_resize"] == "shortest_side"
        for s in range(0, len(masks), limit):
            n = min(limit, len(masks) - s)
            k_crops = 1 if self._apart and shortest else n  # crop_embeds unread under shortest_side (clip_hard's)
            k_masks = 1 if self._apart and nat is not None else n  # masked_embeds unread under released_native
            batch = np.concatenate([preprocess(c, prep) for c in crops[s:s + k_crops]])
            feeds = {"image": x, "patch_masks": pm[s:s + k_masks], "crops": batch}
            if self._native:
                feeds["native_image"], feeds["native_masks"] = \
                    (nat[0], nat[1][s:s + limit]) if nat is not None else self._unused_native(1 if self._apart else n)
            out = self.bundle.run("clip_masked", feeds)
            soft.append(out["native_embeds" if nat is not None else "masked_embeds"])
            hard.append(out["crop_embeds"])
        crop = self.hard_embeddings(crops) if shortest else np.concatenate(hard)
        res = ProposalEmbeddings(np.concatenate(soft), crop)
        if memo is not None and key is not None:
            memo[key] = res
        return res

    def scores(self, c: np.ndarray, masks: np.ndarray, embeddings: ProposalEmbeddings,
               text: np.ndarray) -> ProposalScores:
        """s^G of ``masks`` (N x H x W bool) on the attention map ``c`` (H x W float32 in [0, 1]), s^D of their
        ``embeddings`` against ``text`` (r, D unit norm, :meth:`text_embeddings`) and s = alpha s^G +
        (1 - alpha) s^D."""
        if len(masks) != len(embeddings):
            raise ValueError(f"got {len(masks)} masks but {len(embeddings)} proposal embeddings; embed the same "
                             f"masks that are scored")
        if self.options["score_rule"] == "released":
            t, k = np.asarray(text)[0], np.asarray(text)[1]
            s_g = released_generative_scores(c, masks)
            w = {key: float(self.options[key]) for key in RELEASED_WEIGHTS}
            sh, ss, total = released_total_scores(embeddings.crop, embeddings.masked, t, k, s_g, w)
            return ProposalScores(s_g, (w["hard_weight"] * sh + w["soft_weight"] * ss).astype(np.float32), total)
        alpha = float(self.options["alpha"])
        s_g = generative_scores(c, masks)
        s_d = discriminative_scores(embeddings.masked, embeddings.crop, text, float(self.options["beta"]))
        return ProposalScores(s_g, s_d, (alpha * s_g + (1.0 - alpha) * s_d).astype(np.float32))

    def score(self, image: np.ndarray, c: np.ndarray, masks: np.ndarray, parsed: ParsedExpression,
              memo: dict | None = None, key: Hashable | None = None) -> ProposalScores:
        """Everything for one expression: r of ``parsed``, the embeddings of ``masks`` (N x H x W bool, at least
        one) under ``parsed.directions`` and their scores on ``c`` (H x W float32 in [0, 1])."""
        emb = self.embed(image, masks, tuple(parsed.directions), memo, key)
        return self.scores(c, masks, emb, self.text_embeddings([parsed])[0])
