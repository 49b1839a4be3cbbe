"""Ref-Diff's generative branch as a stage of its own: the attention localizer (``sd_text`` + ``vae_encoder`` +
``unet_attn`` + the numpy DDIM of :mod:`edgeseg.runtime.ddim`).

    loc = AttentionLocalizer(bundle)                      # options default to the bundle's method_config
    latent = loc.encode(image)                            # 1 x C x h x w float32 (VAE latent, scaled)
    parsed = [parse_expression("the red circle on the left")]
    targets = loc.target_tokens(parsed)                   # the SD token whose cross-attention is read
    states = loc.text_states([p.text for p in parsed])    # N x 77 x D float32 (cached per text)
    c = loc.attention(latent, states, targets.indices, image.shape[:2])   # N x H x W float32 in [0, 1]

The latent is noised to the first DDIM timestep (``steps`` x ``strength``, or the one timestep ``single_t``); the
UNet runs the unconditional and conditional halves in one batch (classifier-free guidance ``guidance``).
``attention_map="probabilities"`` (paper): its cross-attention probabilities averaged over heads and layers; each
target token's map, averaged over the steps, min-max normalized at the attention grid and resized (bilinear) to
the image, is ``c``. ``"released_lanczos"`` (released): its per-layer head-mean pre-softmax logits at latent/4
(``attn_logits``); per layer call ``uncond + guidance * (cond - uncond)``, the token's column, min-max; the mean
over every layer call of every step (:func:`~.refdiff_released.attention_from_logits`), then uint8, LANCZOS to the
padded square, the crop back and min-max (:func:`~.refdiff_released.attention_to_image`). The released code
hard-codes 9 in the attention combination and uses its config's scale (9) for the noise; here both are
``guidance``.

``vae_geometry="released_resize"`` (the released ``diffusion_pad: False``; with ``attention_map="released_lanczos"``
only, on a bundle exported with ``sd_dynamic``: ``toy-dynamic``, ``released-vit-h-nopad``): the image is scaled
by S / max(H, W) (S the VAE opt size, ``method_config.sd_dynamic.image_opt``), each side floored to the bundle's
``sd_dynamic.multiple`` (64 px for SD 1.5 as released, 16 for the toy), BICUBIC, no padding; the logits grid is
that size / (S / g) (the released ``resize // 32``); the map is LANCZOS-stretched to the max(H, W) square and
cropped as if padded (the released stretch-then-crop quirk, :func:`~.refdiff_released.attention_to_image`).
A side floored below the multiple (an aspect ratio over S / multiple) is refused in one line, never rescaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import Bundle, BundleError
from .cache import TextEmbeddingCache
from .ddim import DDIMSchedule
from .images import preprocess, resize_maps
from .refdiff_options import check_options
from .refdiff_released import (attention_from_logits, attention_to_image,
                               diffusion_pad_input, diffusion_resize_input, released_denoise_timesteps,
                               released_noise_timestep, released_token_index, resize_target)
from .refdiff_scores import normalize_map
from .refer_text import ParsedExpression, target_token_index
from .text import default_cache_dir, output_dim, text_cache_context
from .tokenizer import ClipTokenizer

# The localizer's options (the manifest's method_config overrides them, keyword arguments override both).
LOCALIZER_DEFAULTS: dict[str, Any] = {"guidance": 9.0, "steps": 20, "strength": 0.1, "single_t": None, "seed": 0,
                                      "ddim_noise": "first_timestep", "vae_geometry": "squash",
                                      "attention_map": "probabilities", "target_rule": "nominal",
                                      "sd_prompt": "expression", "positive_prompt": ""}


def open_bundle(bundle: Bundle | str | Path, provider: str | None, components: Sequence[str], stage: str) -> Bundle:
    """``bundle`` as a :class:`Bundle` (a folder is loaded with ``provider``), checked to hold ``components``."""
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=provider)
    missing = [c for c in components if c not in b.components]
    if missing:
        raise ValueError(f"{stage} needs the components {list(components)}; bundle {b.path} ({b.method}) lacks "
                         f"{missing}: export a Ref-Diff bundle (edgeseg export refdiff toy --out DIR)")
    return b


def stage_options(stage: str, defaults: dict[str, Any], config: dict, overrides: dict[str, Any]) -> dict[str, Any]:
    """A stage's options: ``defaults`` < the bundle's ``method_config`` < ``overrides`` (unknown keys refused)."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {stage} option(s) {unknown}; known: {sorted(defaults)}")
    return check_options({k: config.get(k, v) for k, v in defaults.items()} | overrides)


@dataclass
class TargetTokens:
    """Where each expression's target word is read in the SD text row (its last BPE piece).

    ``indices``: N ints in [1, 75]; ``truncated``: the text was cut at the context length; ``lost``: the target
    itself lay past the cut, so the last kept token (context_length - 2) stands in for it."""

    indices: list[int]
    truncated: list[bool]
    lost: list[bool]


class AttentionLocalizer:
    """``AttentionLocalizer(bundle, cache_dir="default", provider=None, **options)``: image latents and the guided-DDIM
    cross-attention maps ``c`` of target tokens. Options: guidance, steps, strength, single_t, seed, ddim_noise,
    vae_geometry, attention_map, target_rule, sd_prompt, positive_prompt (:mod:`.refdiff_presets`;
    :data:`LOCALIZER_DEFAULTS`, overridden by the bundle's ``method_config``, then by keyword arguments).

    Owns the SD tokenizer, the SD text-state cache (by ``sd_text`` hash, SD tokenizer hash, context length and ids;
    ``cache_dir`` a folder, "default" or None for memory only) and the unconditional (empty prompt) states."""

    COMPONENTS = ("sd_text", "vae_encoder", "unet_attn")  # the bundle components this stage runs

    def __init__(self, bundle: Bundle | str | Path, cache_dir: str | Path | None = "default",
                 provider: str | None = None, **options: Any):
        self.bundle = open_bundle(bundle, provider, self.COMPONENTS, type(self).__name__)
        self.config: dict = self.bundle.manifest.get("method_config", {})
        self.options = stage_options(type(self).__name__, LOCALIZER_DEFAULTS, self.config, options)
        self.schedule = DDIMSchedule.from_config(self.config["scheduler"])
        o = self.options
        if o["single_t"] is None and not len(self.schedule.timesteps(int(o["steps"]), float(o["strength"]))):
            raise ValueError(f"Ref-Diff options steps={o['steps']} x strength={o['strength']} leave no DDIM step "
                             f"(int(steps * strength) must be >= 1); raise strength or steps, or set single_t")
        if o["single_t"] is not None and not o["single_t"] < self.schedule.num_train_timesteps:
            raise ValueError(f"Ref-Diff option single_t={o['single_t']}: must be below the scheduler's "
                             f"{self.schedule.num_train_timesteps} training timesteps")
        if o["attention_map"] == "released_lanczos" and o["vae_geometry"] not in ("diffusion_pad", "released_resize"):
            raise ValueError("Ref-Diff option attention_map='released_lanczos' crops the padded square back: it "
                             "needs vae_geometry='diffusion_pad' (or 'released_resize' on an sd_dynamic bundle)")
        if o["vae_geometry"] == "released_resize" and o["attention_map"] != "released_lanczos":
            raise ValueError(f"Ref-Diff option vae_geometry='released_resize' is the released geometry of the "
                             f"released map: it needs attention_map='released_lanczos', got {o['attention_map']!r}")
        self.dynamic: dict | None = self._dynamic() if o["vae_geometry"] == "released_resize" else None
        self.grid: tuple[int, int] = tuple(self.config["attention"]["grid"])  # type: ignore[assignment]
        self.logits_grid: tuple[int, int] | None = None  # the attn_logits query grid (released attention map)
        if o["attention_map"] == "released_lanczos":
            self.logits_grid = self._logits_grid()
        self.sd_tokenizer = ClipTokenizer.from_manifest(self.bundle.manifest["sd_tokenizer"], self.bundle.path)
        root = default_cache_dir() if cache_dir == "default" else cache_dir
        self.sd_cache = TextEmbeddingCache(self._encode_sd, self.bundle.component_hash("sd_text"), root,
                                           context=text_cache_context(self.bundle, "sd_text", "sd_tokenizer"),
                                           dim=output_dim(self.bundle, "sd_text", "hidden_states"))
        self._uncond: np.ndarray | None = None

    def _logits_grid(self) -> tuple[int, int]:
        """(g_h, g_w) of ``unet_attn``'s ``attn_logits`` (the manifest's ``attention.logits.grid``); a bundle
        exported before that output existed -> BundleError naming the fix."""
        outputs = self.bundle.spec("unet_attn").output_names
        logits = self.config["attention"].get("logits")
        if "attn_logits" not in outputs or not logits:
            raise BundleError(f"bundle {self.bundle.path}: unet_attn has no attn_logits output, which "
                              f"attention_map='released_lanczos' (preset 'released') needs: re-export it with "
                              f"`edgeseg export refdiff CONFIG --out DIR` (e.g. CONFIG toy), or use preset='paper'")
        gh, gw = (int(v) for v in logits["grid"])
        width = self.bundle.spec("unet_attn").output("attn_logits").shape[2]  # a dynamic axis in sd_dynamic bundles
        if not isinstance(width, str) and gh * gw != int(width):
            raise BundleError(f"bundle {self.bundle.path}: attention.logits.grid {[gh, gw]} does not match "
                              f"attn_logits' {width} queries: the manifest was edited; re-export the bundle")
        return gh, gw

    def _dynamic(self) -> dict:
        """``method_config.sd_dynamic`` of a bundle whose ``vae_encoder`` / ``unet_attn`` take dynamic H x W; a
        fixed-size bundle -> BundleError naming the fix."""
        image = self.bundle.spec("vae_encoder").input("image")
        sample = self.bundle.spec("unet_attn").input("sample")
        dyn = self.config.get("sd_dynamic")
        if not (isinstance(dyn, dict) and all(isinstance(d, str) for d in (*image.shape[2:], *sample.shape[2:]))):
            raise BundleError(f"bundle {self.bundle.path}: vae_encoder / unet_attn take fixed "
                              f"{image.shape[2]}x{image.shape[3]} inputs, which vae_geometry='released_resize' "
                              f"cannot feed: re-export with a dynamic config (`edgeseg export refdiff toy-dynamic "
                              f"--out DIR`, or released-vit-h-nopad), or use vae_geometry='diffusion_pad'")
        return dyn

    # ------------------------------------------------------------------ image
    def resize_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(H', W') of ``vae_geometry="released_resize"`` for an H x W image, checked against the bundle's dynamic
        profile (one-line ValueError when a side falls outside it: never rescaled)."""
        assert self.dynamic is not None  # set in __init__ for this geometry
        size, m = int(self.dynamic["image_opt"][0]), int(self.dynamic["multiple"])
        rh, rw = resize_target(hw, size, m)
        lo, hi = self.dynamic["image_min"], self.dynamic["image_max"]
        if not (lo[0] <= rh <= hi[0] and lo[1] <= rw <= hi[1]):
            raise ValueError(f"vae_geometry='released_resize': image {hw[0]}x{hw[1]} scales to {rh}x{rw} px, "
                             f"outside the bundle's VAE profile {lo[0]}x{lo[1]}..{hi[0]}x{hi[1]} (aspect ratio over "
                             f"{size // m}:1); use vae_geometry='diffusion_pad'")
        return rh, rw

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> 1 x 3 x H' x W' float32 in [-1, 1] (the manifest's ``vae_preprocessing``);
        ``vae_geometry="diffusion_pad"``: first centred on a black square and LANCZOS-resized to the VAE size;
        ``"released_resize"``: BICUBIC to :meth:`resize_size` (no padding, H' x W' not square)."""
        prep = self.config["vae_preprocessing"]
        if self.dynamic is not None:  # vae_geometry="released_resize"
            self.resize_size(image.shape[:2])  # the profile check first: its one-line error names the fix
            resized = diffusion_resize_input(image, int(self.dynamic["image_opt"][0]), int(self.dynamic["multiple"]))
            return preprocess(resized, dict(prep, image_size=list(resized.shape[:2])))
        if self.options["vae_geometry"] == "diffusion_pad":
            h, w = (int(v) for v in prep["image_size"])
            if h != w:
                raise ValueError(f"vae_geometry='diffusion_pad' needs a square VAE input, the bundle's is {h}x{w}")
            image = diffusion_pad_input(image, h)
        return preprocess(image, prep)

    def encode_input(self, x: np.ndarray) -> np.ndarray:
        """1 x 3 x H' x W' preprocessed image -> 1 x C x h x w float32 latent (scaled by the VAE's factor)."""
        return self.bundle.run("vae_encoder", {"image": x})["latent"]

    def encode(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> 1 x C x h x w float32 latent: :meth:`preprocess` then :meth:`encode_input`."""
        return self.encode_input(self.preprocess(image))

    # ------------------------------------------------------------------ text
    def target_tokens(self, parsed: Sequence[ParsedExpression]) -> TargetTokens:
        """The SD token index of each target word (its last BPE piece), whether the text was truncated, and
        whether the target itself was cut off (then the last kept token stands in)."""
        cut = self.sd_tokenizer.truncated(self.prompts(parsed))
        if self.options["target_rule"] == "released_subject":
            found = [released_token_index(self.sd_tokenizer, p.text, p.target_word) for p in parsed]
        else:
            found = [target_token_index(self.sd_tokenizer, p.text, p.target_char_span) for p in parsed]
        last = self.sd_tokenizer.context_length - 2
        return TargetTokens([last if i is None else i for i in found], cut, [i is None for i in found])

    def prompts(self, parsed: Sequence[ParsedExpression]) -> list[str]:
        """The SD prompts: the expressions, or (``sd_prompt="released_suffix"``) expression + ", " +
        ``positive_prompt`` as the released ``get_diffattn``."""
        if self.options["sd_prompt"] == "released_suffix":
            return [p.text + ", " + self.options["positive_prompt"] for p in parsed]
        return [p.text for p in parsed]

    def text_states(self, texts: list[str]) -> np.ndarray:
        """N texts -> N x 77 x D float32 SD text-encoder hidden states, through the text cache."""
        out = self.bundle.spec("sd_text").output("hidden_states")
        return self.sd_cache.get(texts).reshape(len(texts), int(out.shape[1]), int(out.shape[2]))

    def _encode_sd(self, prompts: list[str]) -> np.ndarray:
        """SD text encoder hidden states, flattened for the text cache: M x (77 * D) float32."""
        ids = self.sd_tokenizer(prompts)
        limit = self.bundle.spec("sd_text").input("input_ids").max[0]
        outs = [self.bundle.run("sd_text", {"input_ids": ids[i:i + limit]})["hidden_states"]
                for i in range(0, len(ids), limit)]
        return np.concatenate(outs).reshape(len(ids), -1).astype(np.float32)

    def uncond_states(self) -> np.ndarray:
        """Hidden states of the empty prompt (sot, then eot/padding), 1 x 77 x D float32; computed once."""
        if self._uncond is None:
            t = self.sd_tokenizer
            ids = np.full((1, t.context_length), t.pad_id, np.int64)
            ids[0, 0], ids[0, 1] = t.sot_id, t.eot_id
            self._uncond = self.bundle.run("sd_text", {"input_ids": ids})["hidden_states"]
        return self._uncond

    # ------------------------------------------------------------------ attention
    def timesteps(self) -> list[int]:
        """The DDIM timesteps run, first (noisiest) first: ``[single_t]`` or the last ``steps x strength``."""
        o = self.options
        if o["single_t"] is not None:
            return [int(o["single_t"])]
        if o["ddim_noise"] == "released_t_enc_index":
            return released_denoise_timesteps(self.schedule.timesteps(int(o["steps"])), int(o["steps"]),
                                              float(o["strength"]))
        return list(self.schedule.timesteps(int(o["steps"]), float(o["strength"])))

    def noise_timestep(self) -> int:
        """The timestep the latent is noised to: the first one run, or (``ddim_noise="released_t_enc_index"``)
        the schedule's entry t_enc = int(strength * steps) as ldm's ``stochastic_encode`` (t=101 for 20 x 0.1)."""
        o = self.options
        if o["single_t"] is None and o["ddim_noise"] == "released_t_enc_index":
            t = released_noise_timestep(self.schedule.timesteps(int(o["steps"])), int(o["steps"]),
                                        float(o["strength"]))
            self.schedule.timesteps(int(o["steps"]), float(o["strength"]))  # step() spacing: the same steps
            return t
        return self.timesteps()[0]

    def attention(self, latent: np.ndarray, states: np.ndarray, tokens: Sequence[int],
                  size: tuple[int, int]) -> np.ndarray:
        """The generative branch for N expressions -> N x H x W float32 maps ``c`` in [0, 1].

        latent: 1 x C x h x w (:meth:`encode`); states: N x 77 x D (:meth:`text_states`); tokens: N indices into
        the 77-token row (:meth:`target_tokens`); size: (H, W) of the image the maps are resized to. The
        expressions go through the UNet in batches of half its largest batch (unconditional + conditional).
        ``attention_map="released_lanczos"``: expression i of a batch of n reads ``attn_logits`` rows i
        (unconditional) and n + i (conditional), one layer call per layer and step."""
        if len(states) != len(tokens):
            raise ValueError(f"got {len(states)} text states but {len(tokens)} target tokens; give one token per "
                             f"expression")
        o = self.options
        unet = self.bundle.spec("unet_attn")
        limit = max(1, unet.input("sample").max[0] // 2)
        t_dtype = np.dtype(unet.input("timestep").dtype)
        width = int(unet.output("attn").shape[1])
        steps = self.timesteps()
        released = o["attention_map"] == "released_lanczos"
        noise = np.random.default_rng(int(o["seed"])).standard_normal(latent.shape).astype(np.float32)
        maps = []
        for s in range(0, len(tokens), limit):
            cond = states[s:s + limit]
            n = len(cond)
            ctx = np.concatenate([np.repeat(self.uncond_states(), n, 0), cond]).astype(np.float32)
            x = np.repeat(self.schedule.add_noise(latent, noise, self.noise_timestep()), n, 0)
            acc = np.zeros((n, width), np.float32)
            calls: list[list[np.ndarray]] = [[] for _ in range(n)]  # per expression: 2 x 1 x (g_h*g_w) x 77 each
            for k, t in enumerate(steps):
                out = self.bundle.run("unet_attn", {"sample": np.concatenate([x, x]),
                                                    "timestep": np.full(2 * n, t, t_dtype),
                                                    "encoder_hidden_states": ctx})
                uncond, cond_eps = np.split(out["noise_pred"], 2)
                if released:
                    logits = out["attn_logits"]  # 2n x L x (g_h*g_w) x 77
                    for i in range(n):
                        calls[i] += [logits[[i, n + i], layer][:, None] for layer in range(logits.shape[1])]
                else:
                    acc += out["attn"][n + np.arange(n), :, list(tokens[s:s + n])]
                if k + 1 < len(steps):
                    x = self.schedule.step(uncond + o["guidance"] * (cond_eps - uncond), t, x)
            if released:
                assert self.logits_grid is not None  # set in __init__ for this attention map
                grid = self.logits_grid
                if self.dynamic is not None:  # released_resize: the grid of this latent (then stretch-then-crop)
                    down = int(self.config["attention"]["logits"]["downscale"])
                    grid = (latent.shape[2] // down, latent.shape[3] // down)
                maps += [attention_to_image(attention_from_logits(calls[i], int(tok), grid, float(o["guidance"])),
                                            size) for i, tok in enumerate(tokens[s:s + n])]
                continue
            for a in acc / len(steps):
                small = normalize_map(a.reshape(self.grid))
                maps.append(np.clip(resize_maps(small[None], size)[0], 0.0, 1.0))
        return np.stack(maps) if maps else np.zeros((0, *size), np.float32)
