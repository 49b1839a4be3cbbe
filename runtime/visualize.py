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


def overlay(image: np.ndarray, label_map: np.ndarray, labels: list[str], alpha: float = 0.55,
            title: str = "", scale: int = 1):
    """Image, coloured label map blended over it, and a legend of the labels present; returns a PIL image."""
    from PIL import Image, ImageDraw

    blend = (image.astype(np.float32) * (1 - alpha) + colorize(label_map).astype(np.float32) * alpha).astype(np.uint8)
    pair = np.concatenate([image, blend], axis=1)
    im = Image.fromarray(pair)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    present = [i for i in range(len(labels)) if (label_map == i).any()]
    legend_h = 14 * (len(present) + (1 if title else 0)) + 6
    canvas = Image.new("RGB", (im.width, im.height + legend_h), (255, 255, 255))
    canvas.paste(im, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = im.height + 3
    if title:
        d.text((4, y), title, fill=(0, 0, 0))
        y += 14
    for i in present:
        d.rectangle([4, y + 2, 14, y + 12], fill=tuple(int(c) for c in PALETTE[i % len(PALETTE)]))
        d.text((20, y), labels[i], fill=(0, 0, 0))
        y += 14
    return canvas


def save_png(image, path: str | Path) -> Path:
    """Save a PIL image as PNG atomically (temporary name, then rename)."""
    import io

    from .fileio import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
