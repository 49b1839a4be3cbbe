"""Image inputs: numpy arrays (RGB, RGBA, gray; 8 or 16 bit), PIL images or file paths; nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EXPECTED = ("a uint8 (or uint16) HxWx3 RGB, HxWx4 RGBA or HxW gray numpy array, a PIL.Image, or a path to an "
            "image file")
# The largest image accepted by default (40 MP: an 8K frame, most phone photos). Larger inputs are refused with
# the size and the fix instead of running out of memory; raise it with max_pixels= / --max-pixels.
DEFAULT_MAX_PIXELS = 40_000_000


def _check_pixels(w: int, h: int, what: str, max_pixels: int | None) -> None:
    if w < 2 or h < 2:
        raise ValueError(f"{what} is {w}x{h} pixels, too small to segment; expected {EXPECTED} of at least 2x2")
    if max_pixels is not None and w * h > max_pixels:
        raise ValueError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} MP, above the limit of {max_pixels / 1e6:.1f} MP; "
                         f"downscale it, or raise the limit (--max-pixels / max_pixels=) if it fits in memory")


def _from_pil(im: Any, what: str, max_pixels: int | None) -> np.ndarray:
    """A PIL image -> HxWx3 uint8: EXIF orientation applied, 16-bit gray scaled (not clipped) to 8 bits, alpha
    dropped, palette and gray expanded to RGB."""
    from PIL import ImageOps

    _check_pixels(im.width, im.height, what, max_pixels)
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(im).astype(np.float64)
        gray = gray / 257.0 if im.mode.startswith("I;16") or gray.max() > 255 else gray
        return _to_rgb_u8(np.clip(np.round(gray), 0, 255).astype(np.uint8), what)
    if im.mode == "F":
        return _to_rgb_u8(np.clip(np.round(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8), what)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _to_rgb_u8(arr: np.ndarray, what: str) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxWx3 uint8 (gray repeated, alpha dropped as a file's would be)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} has shape {arr.shape}; expected {EXPECTED} (channels last)")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def load_image(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array, or raise a ValueError/TypeError/FileNotFoundError naming the problem.

    Files and PIL images get their EXIF orientation applied; 16-bit input (files or uint16 arrays) is scaled to
    8 bits; gray and RGBA are accepted as arrays exactly as in files (gray repeated, alpha dropped). Images above
    ``max_pixels`` (None: no limit) are refused before they are decoded."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise FileNotFoundError(f"image file {str(p)!r} not found; expected {EXPECTED}")
        try:
            with Image.open(p) as im:
                return _from_pil(im, f"image {str(p)!r}", max_pixels)
        except Image.DecompressionBombError as e:
            raise ValueError(f"image {str(p)!r} is too large to decode safely ({e}); downscale it") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{str(p)!r} is not a readable image ({e}); expected {EXPECTED}") from None
    if isinstance(image, Image.Image):
        return _from_pil(image, "the PIL image", max_pixels)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            image = np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
        if image.dtype != np.uint8:
            hint = " (for floats in [0, 1] pass (x * 255).round().astype(np.uint8))" if image.dtype.kind == "f" else ""
            raise ValueError(f"image array has dtype {image.dtype}; expected {EXPECTED}{hint}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image array has shape {image.shape}; expected {EXPECTED} (channels last)")
        _check_pixels(image.shape[1], image.shape[0], f"image array of shape {image.shape}", max_pixels)
        return _to_rgb_u8(image, "image array")
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
