"""Every number of ``manifest.json`` the runtime reads, checked when the bundle loads, one line naming the field:

    preprocessing.std[1] = 0: must be a positive number

:class:`~.manifest.Manifest` calls :func:`check_preprocessing`, :func:`check_tokenizer` and
:func:`check_method_config`; the I/O shapes (dims, min/opt/max) are checked by :class:`~.manifest.TensorSpec`.
Method-specific options (Ref-Diff's alpha, beta, steps...) are checked again by their predictors.
"""

from __future__ import annotations

import math
from typing import Any

from .integrity import check_name  # the file-name rule of every file the manifest names

__all__ = ["check_method_config", "check_preprocessing", "check_tokenizer", "integer", "number", "sha256_text"]


class ManifestError(ValueError):
    """A manifest entry that does not have the shape this runtime reads."""


def _fail(field: str, value: Any, rule: str) -> ManifestError:
    return ManifestError(f"{field} = {value!r:.80}: {rule}")


def number(v: Any, field: str, lo: float | None = None, lo_open: bool = False, hi: float | None = None) -> float:
    """A finite int/float (bool refused) within the bounds, or ManifestError naming ``field``."""
    if lo == 0 and lo_open and hi is None:
        rule = "must be a positive number"
    elif hi is not None:
        rule = f"must be a number in {'(' if lo_open else '['}{lo}, {hi}]"
    elif lo is not None:
        rule = f"must be a number >= {lo}"
    else:
        rule = "must be a finite number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(field, v, rule)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise _fail(field, v, rule)
    return float(v)


def integer(v: Any, field: str, lo: int = 1, hi: int | None = None) -> int:
    """An int (bool and float refused) in [lo, hi], or ManifestError naming ``field``."""
    rule = "must be a positive integer" if lo == 1 and hi is None else \
        f"must be an integer in [{lo}, {hi}]" if hi is not None else f"must be an integer >= {lo}"
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise _fail(field, v, rule)
    return v


def _list(v: Any, field: str, n: int | None) -> list:
    if not isinstance(v, list) or (n is not None and len(v) != n) or not v:
        want = f"a list of {n}" if n is not None else "a non-empty list"
        raise _fail(field, v, f"must be {want}")
    return v


def numbers(v: Any, field: str, n: int | None = None, **bounds: Any) -> list[float]:
    return [number(x, f"{field}[{i}]", **bounds) for i, x in enumerate(_list(v, field, n))]


def integers(v: Any, field: str, n: int | None = None, lo: int = 1) -> list[int]:
    return [integer(x, f"{field}[{i}]", lo) for i, x in enumerate(_list(v, field, n))]


def section(d: Any, field: str) -> dict:
    if not isinstance(d, dict):
        raise _fail(field, d, "must be an object")
    return d


def sha256_text(v: Any, field: str) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise _fail(field, v, "must be a sha256 hex digest (64 lowercase hex digits)")
    return v


def check_preprocessing(d: Any, field: str, size: str = "image_size", mean: str = "mean", std: str = "std",
                        square: bool = False) -> dict:
    """Image preprocessing: a size ([h, w], or one int when ``square``), 3 finite means, 3 positive stds."""
    d = section(d, field)
    for key in (size, mean, std):
        if key not in d:
            raise ManifestError(f"{field} lacks {key!r} (it needs {size}, {mean} and {std})")
    if square:
        integer(d[size], f"{field}.{size}", 1, 1 << 15)
    else:
        [integer(x, f"{field}.{size}[{i}]", 1, 1 << 15) for i, x in enumerate(_list(d[size], f"{field}.{size}", 2))]
    numbers(d[mean], f"{field}.{mean}", 3)
    numbers(d[std], f"{field}.{std}", 3, lo=0, lo_open=True)
    for key, check in _PREP_NUMBERS.items():  # the resize / sliding-window recipe's numbers, where present
        if key in d:
            check(d[key], f"{field}.{key}")
    return d


def _pair_or_int(v: Any, field: str) -> None:
    """A window or stride: one positive int, or [h, w] positive ints."""
    if isinstance(v, list):
        integers(v, field, 2)
    else:
        integer(v, field)


_PREP_NUMBERS: dict[str, Any] = {
    "base_size": lambda v, f: number(v, f, 0, True),
    "scale": lambda v, f: numbers(v, f, 2, lo=0, lo_open=True),
    "window": _pair_or_int,
    "stride": _pair_or_int,
}


def check_tokenizer(d: Any, field: str) -> dict:
    """A tokenizer entry: type, file, sha256, context length >= 2 and ids inside the vocabulary."""
    d = section(d, field)
    for key in ("type", "file", "sha256", "context_length", "sot_id", "eot_id", "pad_id"):
        if key not in d:
            raise ManifestError(f"{field} lacks {key!r}; re-export the bundle (the export writes type, file, "
                                f"sha256, context_length, sot_id, eot_id and pad_id)")
    if not isinstance(d["type"], str):
        raise _fail(f"{field}.type", d["type"], "must be a string such as 'clip-bpe'")
    try:
        check_name(d["file"], f"{field}.file")
    except ValueError as e:
        raise ManifestError(str(e)) from None
    sha256_text(d["sha256"], f"{field}.sha256")
    integer(d["context_length"], f"{field}.context_length", 2, 1 << 16)
    vocab = integer(d["vocab_size"], f"{field}.vocab_size") if "vocab_size" in d else None
    for key in ("sot_id", "eot_id", "pad_id"):
        integer(d[key], f"{field}.{key}", 0, None if vocab is None else vocab - 1)
    return d


def _at(cfg: dict, path: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


# method_config numbers the runtime reads, checked when present: dotted path -> check(value, field).
_METHOD_NUMBERS: dict[str, Any] = {
    "scaling_factor": lambda v, f: number(v, f, 0, True),
    "mask_threshold": lambda v, f: number(v, f),
    "bg_threshold": lambda v, f: number(v, f),
    "thresholds": lambda v, f: numbers(v, f),
    "latent_shape": lambda v, f: integers(v, f, 3),
    "attention.grid": lambda v, f: integers(v, f, 2),
    "clip_masked.grid": lambda v, f: integers(v, f, 2),
    "clip_masked.embed_dim": lambda v, f: integer(v, f),
    "clip_masked.max_proposals": lambda v, f: integer(v, f),
    "clip_hard.stride": lambda v, f: integers(v, f, 2),
    "clip_hard.short_side": lambda v, f: integer(v, f),
    "clip_hard.max_crops": lambda v, f: integer(v, f),
    "scheduler.num_train_timesteps": lambda v, f: integer(v, f),
    "scheduler.beta_start": lambda v, f: number(v, f, 0, True),
    "scheduler.beta_end": lambda v, f: number(v, f, 0, True),
    "scheduler.steps_offset": lambda v, f: integer(v, f, 0),
    "amg.points_per_side": lambda v, f: integer(v, f),
    "amg.pred_iou_thresh": lambda v, f: number(v, f),
    "amg.stability_score_thresh": lambda v, f: number(v, f),
    "amg.stability_offset": lambda v, f: number(v, f),
    "amg.box_nms_thresh": lambda v, f: number(v, f),
    "amg.min_mask_area": lambda v, f: number(v, f, 0),
    "amg.max_mask_fraction": lambda v, f: number(v, f, 0, True, 1),
    "amg.top_k": lambda v, f: integer(v, f, 0),
    "amg.batch": lambda v, f: integer(v, f),
    "amg.img_size": lambda v, f: integer(v, f),
    "knn.k": lambda v, f: integer(v, f),
    "knn.iterations": lambda v, f: integer(v, f, 0),
    "pamr.iterations": lambda v, f: integer(v, f, 0),
    "pamr.dilations": lambda v, f: integers(v, f),
}


# Sections a method's runtime reads without a default: method -> (method_config keys, top-level manifest keys).
REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "refdiff": (("scheduler", "attention.grid", "vae_preprocessing", "sam_preprocessing", "amg"), ("sd_tokenizer",)),
}


def check_method_config(cfg: Any, method: str = "", manifest: dict | None = None,
                        field: str = "method_config") -> dict:
    """The numbers of ``method_config`` the runtime uses (image preprocessing of the VAE and SAM, the DDIM
    scheduler, attention and proposal grids, mask-generator and post-processing settings), where present, and
    the sections ``method``'s runtime needs (:data:`REQUIRED`)."""
    cfg = section(cfg, field)
    keys, top = REQUIRED.get(method, ((), ()))
    for path in keys:
        if not _at(cfg, path)[0]:
            raise ManifestError(f"{field} lacks {path!r} (a {method} bundle needs {', '.join(keys)})")
    for key in top:
        if manifest is not None and key not in manifest:
            raise ManifestError(f"the manifest lacks {key!r} (a {method} bundle needs it)")
    if "vae_preprocessing" in cfg:
        check_preprocessing(cfg["vae_preprocessing"], f"{field}.vae_preprocessing")
    if "sam_preprocessing" in cfg:
        check_preprocessing(cfg["sam_preprocessing"], f"{field}.sam_preprocessing", "img_size", "pixel_mean",
                            "pixel_std", square=True)
    for path, check in _METHOD_NUMBERS.items():
        present, value = _at(cfg, path)
        if present:
            check(value, f"{field}.{path}")
    return cfg
