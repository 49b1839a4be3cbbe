"""The released Ref-Diff pipeline's arithmetic (kodenii/Ref-Diff, ``model/segmenter.py``, ``ldm/modules/attention.py``,
``ldm/models/diffusion/ddim.py``) in numpy + PIL, written from that code; the ``released`` preset of
:mod:`.refdiff_presets` runs these.

- :func:`released_noise_timestep` / :func:`released_denoise_timesteps`: the **t_enc index quirk** of ldm's
  ``stochastic_encode``: the latent is noised at the DDIM schedule's entry ``t_enc = int(strength * steps)``
  (timestep 101 for 20 x 0.1), one entry past the first timestep that is then denoised (51, then 1).
- :func:`diffusion_pad_input` / :func:`diffusion_resize_input`: the VAE input geometry (``diffusion_pad``
  True / False; :func:`resize_target` the non-padded size).
- :func:`attention_from_logits`: the attention map from pre-softmax cross-attention logits of layer calls.
- :func:`attention_to_image`: uint8 quantization, LANCZOS to the padded square, crop back, min-max (from the
  non-padded grid too: the stretch-then-crop quirk).
- :func:`filter_proposals`, :func:`select_best`: top-k by area, minimum area, the argmax over kept proposals.
- :func:`hard_crop`, :func:`resize_shortest`: the hard branch's input.
- :func:`released_native_masks`: the soft branch's masks, nearest-downsampled to the CLIP patch grid.
- :func:`released_position_bias`: "left" (substring) wins over "right"; 2/3-width ramp; float64 as released.
- :func:`released_generative_scores`, :func:`released_total_scores`: ``s = w_h cos(hard, t_h) + w_s cos(soft,
  t_s) + w_d s^G`` with ``t_h = a_h t + b_h k`` and ``t_s = a_s t + b_s k`` (not renormalized, as released).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

RELEASED_WEIGHTS = {"hard_weight": 0.7, "soft_weight": 0.3, "diff_weight": 0.05, "hard_text_weight": 1.0,
                    "hard_core_weight": 0.0, "soft_text_weight": 0.5, "soft_core_weight": 0.5}


# ---------------------------------------------------------------------------------------------------- DDIM
def _ascending(schedule_timesteps: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(schedule_timesteps, np.int64))


def released_denoise_timesteps(all_timesteps: np.ndarray, steps: int, strength: float) -> list[int]:
    """The timesteps ldm's ``DDIMSampler.decode(z, c, t_enc)`` runs, noisiest first: the first ``t_enc =
    int(strength * steps)`` entries of the ascending schedule (``all_timesteps``: the ``steps`` DDIM timesteps
    in any order), reversed ([51, 1] for 20 x 0.1)."""
    t_enc = int(strength * steps)
    asc = _ascending(all_timesteps)
    if not 1 <= t_enc < len(asc):
        raise ValueError(f"released DDIM: int(strength * steps) = {t_enc} must lie in [1, {len(asc) - 1}]")
    return [int(t) for t in asc[:t_enc][::-1]]


def released_noise_timestep(all_timesteps: np.ndarray, steps: int, strength: float) -> int:
    """The timestep whose alpha_bar ``stochastic_encode(x0, t_enc)`` noises with: the ascending schedule's entry
    at index ``t_enc`` (101 for 20 x 0.1), not the first denoised timestep (the t_enc index quirk)."""
    t_enc = int(strength * steps)
    asc = _ascending(all_timesteps)
    if not 1 <= t_enc < len(asc):
        raise ValueError(f"released DDIM: int(strength * steps) = {t_enc} must lie in [1, {len(asc) - 1}]")
    return int(asc[t_enc])


# ---------------------------------------------------------------------------------------------------- geometry
def pad_offsets(h: int, w: int) -> tuple[int, int, int]:
    """(side, y0, x0): the square side max(h, w) and where the image's top-left corner sits when centred."""
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def diffusion_pad_input(image: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3 uint8: centred on a black max(H, W) square, then LANCZOS to size."""
    h, w = image.shape[:2]
    side, y0, x0 = pad_offsets(h, w)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[y0:y0 + h, x0:x0 + w] = image[..., :3]
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))


def resize_target(hw: tuple[int, int], size: int, multiple: int = 64) -> tuple[int, int]:
    """(H', W') of the non-padded variant: ``int(side * (size / max(H, W)) // multiple * multiple)`` per side,
    as the released ``get_diffattn`` (``multiple`` 64 there; a bundle's ``sd_dynamic.multiple``)."""
    h, w = int(hw[0]), int(hw[1])
    ratio = size / max(h, w)
    return int(h * ratio // multiple * multiple), int(w * ratio // multiple * multiple)


def diffusion_resize_input(image: np.ndarray, size: int, multiple: int = 64) -> np.ndarray:
    """The non-padded variant (``diffusion_pad: False``): scaled by size / max(H, W), each side floored to a
    multiple of ``multiple`` (64 as released), BICUBIC -> H' x W' x 3 uint8 (:func:`resize_target`)."""
    h, w = image.shape[:2]
    rh, rw = resize_target((h, w), size, multiple)
    if rw < multiple or rh < multiple:
        raise ValueError(f"image {h}x{w} scaled to {size} leaves a side under {multiple} px; use diffusion_pad")
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((rw, rh), Image.BICUBIC))


# ---------------------------------------------------------------------------------------------------- attention
def _minmax(x: np.ndarray, eps: float = 0.0) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo + eps, 1e-12)


def attention_from_logits(calls: Sequence[np.ndarray], token: int, grid: tuple[int, int],
                          guidance: float = 9.0) -> np.ndarray:
    """The released map at the attention grid, gh x gw float64 in [0, 1].

    calls: one array per cross-attention layer call at that grid (every layer, every DDIM step), each
    2 x heads x (gh * gw) x 77 pre-softmax logits q.k * scale, [unconditional, conditional]. Per call: mean over
    heads of each half, ``uncond + guidance * (cond - uncond)``, the ``token`` column, min-max; then the mean over
    calls."""
    if not len(calls):
        raise ValueError("attention_from_logits needs at least one layer call (the capture produced none)")
    gh, gw = grid
    maps = []
    for c in calls:
        c = np.asarray(c, np.float64)
        if c.ndim != 4 or c.shape[0] != 2 or c.shape[2] != gh * gw:
            raise ValueError(f"a layer call must be 2 x heads x {gh * gw} x tokens logits, got {c.shape}")
        un, co = c[0].mean(0), c[1].mean(0)
        x = (un + guidance * (co - un))[:, int(token)].reshape(gh, gw)
        maps.append(_minmax(x))
    return np.mean(maps, axis=0)


def attention_to_image(small: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """gh x gw map in [0, 1] -> H x W float32 in [0, 1]: ``uint8(255 x map)`` (truncated), LANCZOS to the
    max(H, W) square, the image's centred window cut out, min-max (+1e-8). The released code runs these lines for
    both geometries: with ``diffusion_pad`` the grid is the padded square's; with ``vae_geometry="released_resize"``
    it is the *unpadded* (non-square) image's, and this is the **stretch-then-crop quirk**: the map is stretched to
    the square anyway and the centred window cut out as if padded (rows ``(W - H) // 2 : + H`` of a wide image,
    columns of a tall one), so a wide image gets its middle band stretched back, not the map of the whole image."""
    h, w = int(hw[0]), int(hw[1])
    side, y0, x0 = pad_offsets(h, w)
    q = (np.asarray(small, np.float64) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(q, mode="L").resize((side, side), Image.LANCZOS), np.float64) / 255
    big = big[y0:y0 + h, x0:x0 + w]
    return _minmax(big, 1e-8).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- proposals
def filter_proposals(masks: np.ndarray, topk: int | None, min_area: float, min_fraction: float) -> np.ndarray:
    """N x H x W bool -> N bool kept: among the ``topk`` largest (all when None), those whose area exceeds both
    ``min_area`` pixels and ``min_fraction`` of the image (the released ``filter_proposal``)."""
    n = len(masks)
    keep = np.zeros(n, bool)
    if n == 0:  # no SAM mask at all (a blank image): nothing to keep
        return keep
    areas = masks.reshape(n, -1).sum(1)
    k = n if topk is None else min(int(topk), n)
    keep[np.argsort(-areas, kind="stable")[:k]] = True
    size = masks.shape[-1] * masks.shape[-2]
    keep &= (areas > size * float(min_fraction)) & (areas > float(min_area))
    return keep


def select_best(total: np.ndarray, keep: np.ndarray, rule: str = "exclude") -> int:
    """Index of the chosen proposal. ``exclude``: argmax over the kept ones (all when none is kept);
    ``released_multiply_by_zero``: argmax of ``total * keep`` as released (a dropped proposal, scored 0, wins
    when every kept score is negative)."""
    if rule == "released_multiply_by_zero":
        return int(np.argmax(total * keep))
    if rule != "exclude":
        raise ValueError(f"filtered_proposals {rule!r} is not one of 'exclude', 'released_multiply_by_zero'")
    if not keep.any():
        return int(np.argmax(total))
    return int(np.flatnonzero(keep)[np.argmax(total[keep])])


# ---------------------------------------------------------------------------------------------------- hard branch
def released_position_bias(text: str, h: int, w: int) -> np.ndarray | None:
    """The released ``apply_position`` ramp, h x w float64, or None (no bias): "left" anywhere in ``text``
    (case-sensitive substring) -> 1..0 over the first ``w * 2 // 3`` columns, else "right" -> mirrored."""
    k = w * 2 // 3
    if "left" in text:
        ramp = np.concatenate([np.linspace(1, 0, k), np.zeros(w - k)])
    elif "right" in text:
        ramp = np.concatenate([np.zeros(w - k), np.linspace(0, 1, k)])
    else:
        return None
    return np.broadcast_to(ramp[None, :], (h, w))


def released_direction(text: str) -> list[str]:
    """The direction the released rule applies: ["left"], ["right"] or []."""
    return ["left"] if "left" in text else ["right"] if "right" in text else []


def biased_image(image: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """H x W x 3 uint8 image times the released ramp (float64), or the image itself when there is none."""
    return image if bias is None else image * bias[..., None]


def hard_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(position-biased) H x W x 3 image and H x W bool mask -> the mask's bounding box of ``image * mask`` as
    uint8 (truncated, as released); an empty mask gives a 1 x 1 black crop."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return np.zeros((1, 1, 3), np.uint8)
    cut = image * mask[..., None]
    return cut[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)


def resize_shortest(crop: np.ndarray, size: int = 224) -> np.ndarray:
    """h x w x 3 uint8 -> shortest side ``size``, longest ``int(size * long / short)``, BILINEAR (torchvision
    ``Resize(size)`` on a PIL image; no centre crop)."""
    h, w = crop.shape[:2]
    short, long = min(h, w), max(h, w)
    other = int(size * long / short)
    nw, nh = (size, other) if w <= h else (other, size)
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((nw, nh), Image.BILINEAR))


# ---------------------------------------------------------------------------------------------------- soft branch
def _nearest_rows(size_in: int, size_out: int) -> np.ndarray:
    """torch's ``mode="nearest"`` source indices: ``min(floor(i * float32(in / out)), in - 1)`` in float32."""
    if size_in == size_out:
        return np.arange(size_out)
    scale = np.float32(size_in) / np.float32(size_out)
    idx = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, size_in - 1)


def released_native_masks(masks: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """N x H x W bool -> N x (H // stride) x (W // stride) float32 {0, 1}: ``get_clipsoft``'s
    ``F.interpolate(masks, (H // stride, W // stride), mode="nearest")`` (one pixel per patch, may be empty)."""
    n, h, w = masks.shape
    gh, gw = h // int(stride[0]), w // int(stride[1])
    if gh < 1 or gw < 1:
        raise ValueError(f"masks of {h}x{w} px are smaller than one {stride[0]}x{stride[1]} CLIP patch")
    rows, cols = _nearest_rows(h, gh), _nearest_rows(w, gw)
    return np.ascontiguousarray(masks[:, rows][:, :, cols], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- scores
def released_generative_scores(c: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``calc_diffattn``: mean of c inside minus outside, each denominator + 1e-6 -> N float32."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    cv = c.reshape(-1).astype(np.float64)
    s_in = flat @ cv
    n_in = flat.sum(1)
    return (s_in / (n_in + 1e-6) - (cv.sum() - s_in) / (flat.shape[1] - n_in + 1e-6)).astype(np.float32)


def released_total_scores(hard: np.ndarray, soft: np.ndarray, t: np.ndarray, k: np.ndarray, s_g: np.ndarray,
                          weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hard, soft: N x D unit-norm proposal embeddings; t, k: D unit-norm sentence / target-word embeddings;
    s_g: N -> (score_hard N, score_soft N, total N) float32 with the :data:`RELEASED_WEIGHTS` keys of ``weights``."""
    w = {**RELEASED_WEIGHTS, **weights}
    t_h = w["hard_text_weight"] * t + w["hard_core_weight"] * k
    t_s = w["soft_text_weight"] * t + w["soft_core_weight"] * k
    sh, ss = hard @ t_h, soft @ t_s
    total = w["hard_weight"] * sh + w["soft_weight"] * ss + w["diff_weight"] * s_g
    return sh.astype(np.float32), ss.astype(np.float32), total.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- text
def released_subject(doc: object, text: str) -> str:
    """``extract_subject``: the text of the first token whose dependency label contains "ROOT" or "subj"
    (any part of speech), else the whole text. ``doc``: a spaCy Doc of ``text``."""
    for tok in doc:  # type: ignore[attr-defined]
        if "ROOT" in tok.dep_ or "subj" in tok.dep_:
            return str(tok.text)
    return text


def released_token_index(tokenizer: object, text: str, word: str) -> int | None:
    """The attention column the released code reads: the last BPE token of ``text[:text.find(word) + len(word)]``
    (``find``: the first occurrence as a substring), capped at the full text's last token. ``tokenizer``: a
    :class:`~.tokenizer.ClipTokenizer`. None when the prefix is cut at the context length."""
    start = text.find(word)
    prefix = text[:start + len(word)] if start >= 0 else text
    ids, cut = tokenizer.encode([prefix, text])  # type: ignore[attr-defined]
    if cut[0]:
        return None
    eot = tokenizer.eot_id  # type: ignore[attr-defined]
    core = int(np.nonzero(ids[0][1:] == eot)[0][0])
    full = np.nonzero(ids[1][1:] == eot)[0]
    sent = int(full[0]) if len(full) else len(ids[1]) - 2
    return max(min(core, sent), 1)
