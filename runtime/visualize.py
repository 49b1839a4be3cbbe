"""Overlays: label maps and masks drawn over the image, with a legend (PNG-ready PIL images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], np.uint8)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """H x W int -> H x W x 3 uint8 palette colours."""
    return PALETTE[label_map % len(PALETTE)]


# Overlays are bounded to this width (pixels) by default, whatever the input size; small inputs are enlarged
# to at least MIN_PANEL px per panel so the legend fits. Change it with max_width= / --max-overlay-width.
MAX_OVERLAY_WIDTH = 2048
MIN_PANEL = 160


def _font(size: int):
    """PIL's default font at ``size`` px (a scalable one where Pillow has FreeType, else the fixed bitmap)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: one fixed size
        return ImageFont.load_default()


def panel_size(h: int, w: int, n_panels: int, scale: int = 1, max_width: int = MAX_OVERLAY_WIDTH) -> tuple[int, int]:
    """(panel height, panel width) for ``n_panels`` side-by-side copies of an HxW image: ``scale`` times the
    input, shrunk so all panels fit in ``max_width``, enlarged to at least MIN_PANEL px wide; aspect kept."""
    if max_width < MIN_PANEL * n_panels:
        raise ValueError(f"max overlay width {max_width} is too small for {n_panels} panels; give at least "
                         f"{MIN_PANEL * n_panels}")
    pw = min(w * scale, max_width // n_panels)
    pw = max(pw, MIN_PANEL)
    return max(1, round(h * pw / w)), pw


def overlay(image: np.ndarray, label_map: np.ndarray, labels: list[str], alpha: float = 0.55,
            title: str = "", scale: int = 1, max_width: int = MAX_OVERLAY_WIDTH):
    """Image and the coloured label map blended over it, side by side, and a legend of the labels present;
    returns a PIL image at most ``max_width`` wide, its legend scaled with it."""
    from PIL import Image, ImageDraw

    blend = (image.astype(np.float32) * (1 - alpha) + colorize(label_map).astype(np.float32) * alpha).astype(np.uint8)
    ph, pw = panel_size(*image.shape[:2], 2, scale, max_width)
    resample = Image.NEAREST if pw >= image.shape[1] else Image.BILINEAR
    im = Image.new("RGB", (2 * pw, ph))
    for k, arr in enumerate((image, blend)):
        im.paste(Image.fromarray(arr).resize((pw, ph), resample), (k * pw, 0))
    present = [i for i in range(len(labels)) if (label_map == i).any()]
    fs = max(11, im.width // 60)
    row = fs + fs // 3
    font = _font(fs)
    legend_h = row * (len(present) + (1 if title else 0)) + row // 2
    canvas = Image.new("RGB", (im.width, im.height + legend_h), (255, 255, 255))
    canvas.paste(im, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = im.height + row // 4
    if title:
        d.text((4, y), title, fill=(0, 0, 0), font=font)
        y += row
    for i in present:
        d.rectangle([4, y + 2, 4 + fs - 2, y + fs], fill=tuple(int(c) for c in PALETTE[i % len(PALETTE)]))
        d.text((8 + fs, y), labels[i], fill=(0, 0, 0), font=font)
        y += row
    return canvas


# Formats an overlay can be written in, by file suffix.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def image_format(path: str | Path) -> str:
    """The PIL format for an output file name, or a ValueError naming the suffixes that can be written."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write an image as {str(path)!r}: give a file name ending in "
                         f"{', '.join(IMAGE_FORMATS)}")
    return fmt


def save_image(image, path: str | Path) -> Path:
    """Save a PIL image atomically in the format its suffix names (.png, .jpg/.jpeg, .webp); another suffix is
    refused before anything is written."""
    import io

    from .fileio import atomic_write_bytes

    fmt = image_format(path)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    return atomic_write_bytes(path, buf.getvalue())


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image as PNG atomically (temporary name, then rename)."""
    import io

    from .fileio import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def heatmap(values: np.ndarray) -> np.ndarray:
    """H x W float in [0, 1] -> H x W x 3 uint8, dark blue (0) through green and yellow to red (1)."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)
    stops = np.array([(20, 20, 110), (30, 140, 220), (60, 200, 90), (250, 220, 40), (220, 30, 30)], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.minimum(pos.astype(int), len(stops) - 2)
    w = (pos - lo)[..., None]
    return (stops[lo] * (1 - w) + stops[lo + 1] * w).astype(np.uint8)


def refer_overlay(image: np.ndarray, result, top: int = 3, scale: int = 2, max_width: int = MAX_OVERLAY_WIDTH):
    """Ref-Diff result panel (PIL image, at most ``max_width`` wide, text scaled with it): the chosen mask over
    the image, the attention heat map ``c``, and the ``top`` best proposals with their scores (s, s^G, s^D), the
    expression and target word as the title."""
    from PIL import Image, ImageDraw

    def tint(mask: np.ndarray, colour=(255, 40, 40), alpha: float = 0.55) -> np.ndarray:
        out = image.astype(np.float32).copy()
        out[mask] = out[mask] * (1 - alpha) + np.array(colour, np.float32) * alpha
        return out.astype(np.uint8)

    heat = (image.astype(np.float32) * 0.35 + heatmap(result.attention).astype(np.float32) * 0.65).astype(np.uint8)
    panels = [(tint(result.mask), "chosen mask"), (heat, f"attention: '{result.target_word}'")]
    for rank, i in enumerate(result.top(top), start=1):
        sc = result.scores
        panels.append((tint(result.proposals[i], (40, 120, 255)),
                       f"#{rank} s={sc['total'][i]:.3f} G={sc['generative'][i]:.2f} D={sc['discriminative'][i]:.3f}"))
    ph, pw = panel_size(*image.shape[:2], len(panels), scale, max_width)
    resample = Image.NEAREST if pw >= image.shape[1] else Image.BILINEAR
    fs = max(11, min(pw // 14, (pw * len(panels)) // 70))
    font, label_h = _font(fs), fs + fs // 2
    canvas = Image.new("RGB", (pw * len(panels), ph + 2 * label_h + 4), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((4, 2), f"\"{result.expression}\"  ->  target '{result.target_word}'  ({result.parsed.parser})",
           fill=(0, 0, 0), font=font)
    for k, (arr, label) in enumerate(panels):
        canvas.paste(Image.fromarray(arr).resize((pw, ph), resample), (k * pw, label_h))
        d.text((k * pw + 3, label_h + ph + 2), label, fill=(0, 0, 0), font=font)
    return canvas
