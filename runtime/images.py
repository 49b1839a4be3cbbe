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


# Preprocessing recipes (the manifest's ``preprocessing.recipe``), each equal to a reference implementation:
#   squash-bilinear  every image resized to image_size with PIL bilinear (the default of bundles without a recipe:
#                    the ToyWorld bundles, so their committed figures stay reproducible)
#   openclip         open_clip's eval transform: shortest side to image_size with PIL bicubic (torchvision's
#                    Resize on a PIL image), centre crop (torchvision's CenterCrop), /255, mean/std
#   lseg-encoding    lang-seg's evaluation (PyTorch-Encoding's MultiEvalModule, one scale): /255, mean/std at
#                    the native size, then bilinear with align_corners=True on the normalized image so that the
#                    long side is base_size; windows padded with black (normalized -mean/std)
#   mmseg-rescale    TCL's evaluation (mmseg's Resize keep_ratio): the scale factor that fits the image into the
#                    (long, short) box ``scale``, OpenCV INTER_LINEAR on uint8 (mmcv.imrescale), then mean/std
RECIPES = ("squash-bilinear", "openclip", "lseg-encoding", "mmseg-rescale")
DEFAULT_RECIPE = "squash-bilinear"
# How each recipe tiles (runtime.sliding) and resizes the blended maps back to the image: the official mode.
TILING = {"squash-bilinear": ("shift", False), "openclip": ("shift", False), "lseg-encoding": ("pad", True),
          "mmseg-rescale": ("shift", False)}


def recipe_of(prep: dict) -> str:
    """The preprocessing recipe a manifest names (``squash-bilinear`` when it names none), checked."""
    recipe = prep.get("recipe", DEFAULT_RECIPE)
    if recipe not in RECIPES:
        raise ValueError(f"preprocessing recipe {recipe!r} is unknown to this runtime; known: {list(RECIPES)} "
                         f"(upgrade edgeseg, or re-export the bundle)")
    for key in {"lseg-encoding": ("base_size",), "mmseg-rescale": ("scale",)}.get(recipe, ()):
        if key not in prep:
            raise ValueError(f"preprocessing recipe {recipe!r} needs {key!r} in the manifest's preprocessing; "
                             f"re-export the bundle")
    return recipe


def _normalize(x: np.ndarray, prep: dict) -> np.ndarray:
    """H x W x 3 float32 in [0, 1] -> 1 x 3 x H x W float32, (x - mean) / std per channel."""
    x = (x - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _openclip(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Shortest side to the crop's size (the long side truncated as torchvision computes it), PIL bicubic, then
    a centre crop of ``size`` (offsets rounded half to even, as torchvision's CenterCrop)."""
    from PIL import Image

    h, w = image.shape[:2]
    th, tw = size
    if th != tw:
        raise ValueError(f"the openclip recipe needs a square image_size, got {size}; re-export the bundle")
    short = th
    if h <= w:
        nh, nw = short, int(short * w / h)
    else:
        nh, nw = int(short * h / w), short
    im = Image.fromarray(image)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    return np.asarray(im)[top:top + th, left:left + tw]


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: (h, w) -> the size that fits into the box (long edge <= max(scale), short edge <=
    min(scale)) keeping the ratio: factor min(long_max / long, short_max / short), each side int(x f + 0.5)."""
    h, w = hw
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(f) + 0.5), int(w * float(f) + 0.5)


def lseg_size(hw: tuple[int, int], base_size: int) -> tuple[int, int]:
    """PyTorch-Encoding's MultiEvalModule at scale 1: the long side becomes ``base_size`` (ceil), the short one
    int(short * long_new / long + 0.5)."""
    h, w = hw
    long = int(np.ceil(base_size))
    return (long, int(1.0 * w * long / h + 0.5)) if h > w else (int(1.0 * h * long / w + 0.5), long)


def canvas(image: np.ndarray, prep: dict) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xH'xW' float32: the image as the recipe prepares it for sliding windows (the windows
    are cut from it by :mod:`edgeseg.runtime.sliding`): lseg-encoding long side to ``base_size``, mmseg-rescale
    into the ``scale`` box, squash-bilinear / openclip at the image's own size."""
    from .resample import resize_linear, resize_u8_like_cv2

    recipe = recipe_of(prep)
    if recipe == "lseg-encoding":
        x = _normalize(image.astype(np.float32) / 255.0, prep)
        return np.ascontiguousarray(resize_linear(x, lseg_size(image.shape[:2], prep["base_size"]), True))
    if recipe == "mmseg-rescale":
        size = rescale_size(image.shape[:2], tuple(prep["scale"]))
        if size != image.shape[:2]:
            image = resize_u8_like_cv2(image, size)
    return _normalize(image.astype(np.float32) / 255.0, prep)


def preprocess(image: np.ndarray, prep: dict) -> np.ndarray:
    """HxWx3 uint8 -> 1x3xH'xW' float32 RGB at ``prep['image_size']`` (the encoder's input), normalized by
    mean/std, by the manifest's recipe: squash-bilinear (the default) resizes with PIL bilinear; openclip
    resizes the shortest side with bicubic and centre-crops; lseg-encoding / mmseg-rescale resize the whole
    image to the input with their own kernels (one window: ``segment(..., window=0)``; sliding windows start from
    :func:`canvas` instead)."""
    from PIL import Image

    from .resample import resize_linear, resize_u8_like_cv2

    h, w = prep["image_size"]
    recipe = recipe_of(prep)
    if recipe == "openclip":
        return _normalize(_openclip(image, (h, w)).astype(np.float32) / 255.0, prep)
    if recipe == "lseg-encoding":
        return np.ascontiguousarray(resize_linear(_normalize(image.astype(np.float32) / 255.0, prep), (h, w), True))
    if image.shape[:2] != (h, w):
        image = (resize_u8_like_cv2(image, (h, w)) if recipe == "mmseg-rescale"
                 else np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)))
    return _normalize(image.astype(np.float32) / 255.0, prep)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w float32 -> C x H x W by bilinear resampling (identity when sizes agree). size = (H, W)."""
    from PIL import Image

    if maps.shape[1:] == tuple(size):
        return maps
    H, W = size
    return np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((W, H), Image.BILINEAR))
                     for m in maps])
