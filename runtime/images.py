"""Image inputs: uint8 HxWx3 RGB numpy arrays, PIL images or file paths; nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXPECTED = "a uint8 HxWx3 RGB numpy array, a PIL.Image, or a path to an image file"


def load_image(image: Any) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array, or raise a ValueError/TypeError/FileNotFoundError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"image file {str(p)!r} not found; expected {EXPECTED}")
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{str(p)!r} is not a readable image ({e}); expected {EXPECTED}") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            hint = " (for floats in [0, 1] pass (x * 255).round().astype(np.uint8))" if image.dtype.kind == "f" else ""
            raise ValueError(f"image array has dtype {image.dtype}; expected {EXPECTED}{hint}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array has shape {image.shape}; expected {EXPECTED} (HxWx3, channels last)")
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise ValueError(f"image array of shape {image.shape} is too small; expected {EXPECTED}")
        return np.ascontiguousarray(image)
    raise TypeError(f"image of type {type(image).__name__} is not supported; expected {EXPECTED}")


def preprocess(image: np.ndarray, prep: dict) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xH'xW' float32 RGB, resized to ``prep['image_size']`` and normalized by mean/std."""
    from PIL import Image

    h, w = prep["image_size"]
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w float32 -> C x H x W by bilinear resampling (identity when sizes agree). size = (H, W)."""
    from PIL import Image

    if maps.shape[1:] == tuple(size):
        return maps
    H, W = size
    return np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((W, H), Image.BILINEAR))
                     for m in maps])
