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


def heatmap(values: np.ndarray) -> np.ndarray:
    """H x W float in [0, 1] -> H x W x 3 uint8, dark blue (0) through green and yellow to red (1)."""
    v = np.clip(values.astype(np.float32), 0.0, 1.0)
    stops = np.array([(20, 20, 110), (30, 140, 220), (60, 200, 90), (250, 220, 40), (220, 30, 30)], np.float32)
    pos = v * (len(stops) - 1)
    lo = np.minimum(pos.astype(int), len(stops) - 2)
    w = (pos - lo)[..., None]
    return (stops[lo] * (1 - w) + stops[lo + 1] * w).astype(np.uint8)


def refer_overlay(image: np.ndarray, result, top: int = 3, scale: int = 2):
    """Ref-Diff result panel (PIL image): the chosen mask over the image, the attention heat map ``c``, and the
    ``top`` best proposals with their scores (s, s^G, s^D), the expression and target word as the title."""
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
    h, w = image.shape[:2]
    pw, ph = w * scale, h * scale
    label_h = 16
    canvas = Image.new("RGB", (pw * len(panels), ph + 2 * label_h + 4), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((4, 2), f"\"{result.expression}\"  ->  target '{result.target_word}'  ({result.parsed.parser})",
           fill=(0, 0, 0))
    for k, (arr, label) in enumerate(panels):
        canvas.paste(Image.fromarray(arr).resize((pw, ph), Image.NEAREST), (k * pw, label_h))
        d.text((k * pw + 3, label_h + ph + 2), label, fill=(0, 0, 0))
    return canvas
