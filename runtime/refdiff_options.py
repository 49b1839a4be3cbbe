"""Every Ref-Diff option checked at construction (type, range, finiteness), one line naming the option, what
it got and what it takes, so a bad value fails before any image is encoded.

    check_options({"alpha": 2.0})    # ValueError: Ref-Diff option alpha=2.0: must be a finite number in [0, 1]
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def _number(lo: float | None, hi: float | None, lo_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            return False
        return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)

    left = "(" if lo_open else "["
    rng = f" in {left}{lo}, {hi}]" if hi is not None else (f" > {lo}" if lo_open else f" >= {lo}")
    return ok, f"must be a finite number{rng}"


def _integer(lo: int, hi: int | None = None, optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if v is None:
            return optional
        return (not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= lo
                and (hi is None or v <= hi))

    rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    return ok, f"must be an int {rng}" + (" or None" if optional else "")


def _choice(*values: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (str, type(None))) and v in values), f"must be one of {list(values)}"


def _parser() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or (isinstance(v, str) and bool(v.strip()))), \
        "must be a spaCy pipeline name or None (the parser-free rule)"


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "alpha": _number(0.0, 1.0),
    "beta": _number(0.0, 1.0),
    "guidance": _number(0.0, 100.0),
    "steps": _integer(1, 1000),
    "strength": _number(0.0, 1.0, lo_open=True),
    "single_t": _integer(0, 999, optional=True),
    "seed": _integer(0),
    "proposals": _choice("sam", "thresholds", "both"),
    "hard_branch": _choice("mask", "crop", "masked_box"),
    "position_bias": _choice("hard", "soft", "both"),
    "parser": _parser(),
    "ddim_noise": _choice("first_timestep", "released_t_enc_index"),
    "vae_geometry": _choice("squash", "diffusion_pad", "released_resize"),
    "attention_map": _choice("probabilities", "released_lanczos"),
    "target_rule": _choice("nominal", "released_subject"),
    "position_rule": _choice("words", "released_substring"),
    "sd_prompt": _choice("expression", "released_suffix"),
    "positive_prompt": ((lambda v: isinstance(v, str)), "must be a str (may be empty)"),
    "score_rule": _choice("paper", "released"),
    "soft_branch": _choice("resized", "released_native"),
    "hard_resize": _choice("clip_input", "shortest_side"),
    "topk": _integer(1, optional=True),
    "min_area": _number(0.0, None),
    "min_area_fraction": _number(0.0, 1.0),
    "filtered_proposals": _choice("exclude", "released_multiply_by_zero"),
    **{k: _number(-10.0, 10.0) for k in ("hard_weight", "soft_weight", "diff_weight", "hard_text_weight",
                                          "hard_core_weight", "soft_text_weight", "soft_core_weight")},
}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Raise ValueError for the first option (known to :data:`CHECKS`) whose value is not allowed."""
    for name, value in options.items():
        if name in CHECKS:
            ok, rule = CHECKS[name]
            if not ok(value):
                raise ValueError(f"Ref-Diff option {name}={value!r}: {rule}")
    return options
