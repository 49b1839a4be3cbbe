"""Resampling in numpy, written to equal the reference libraries' kernels (no antialiasing, as they have none):

- :func:`resize_linear` is ``torch.nn.functional.interpolate(mode="bilinear", antialias=False)`` with
  ``align_corners`` True or False (float32 coordinates as torch's CPU kernel computes them).
- :func:`resize_u8_like_cv2` is OpenCV's ``cv2.resize(INTER_LINEAR)`` on uint8 (mmcv's resize), in its integer
  arithmetic.
- :func:`argmax_resized`: the argmax of C maps resized one at a time (no C x H x W temporary).

Shapes: ``... x H x W`` float arrays; sizes are (H, W).
"""

from __future__ import annotations

import numpy as np


def _axis(n_in: int, n_out: int, align_corners: bool, scale: float | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """(i0, i1, w1) for one axis: out[j] = in[i0[j]] * (1 - w1[j]) + in[i1[j]] * w1[j], the source coordinate
    computed in float32 as torch computes it on the CPU.

    ``align_corners``: source = j (n_in - 1) / (n_out - 1); else source = (j + 0.5) s - 0.5 clamped at 0 with
    s = n_in / n_out, or ``1 / scale`` when the caller resized by a scale factor (torch's rule)."""
    f32 = np.float32
    j = np.arange(n_out, dtype=f32)
    if align_corners:
        src = j * (f32(n_in - 1) / f32(n_out - 1)) if n_out > 1 else np.zeros_like(j)
    else:
        s = f32(1.0 / scale) if scale else f32(n_in) / f32(n_out)
        src = np.maximum((j + f32(0.5)) * s - f32(0.5), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0, 1).astype(f32)


def _cv2_axis(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR tables for one axis: (i0, i1, a0, a1), weights in 11-bit fixed point. Source
    f = float32((j + 0.5) / (n_out / n_in) - 0.5); columns (``clamp_weights``) put all weight on the border pixel
    outside the image, rows only clamp the row indices (resize.cpp)."""
    f = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    if clamp_weights:
        f[s < 0], s[s < 0] = 0, 0
        hi = s >= n_in - 1
        f[hi], s[hi] = 0, n_in - 1
    a0 = np.rint((np.float32(1) - f) * 2048).astype(np.int64)
    a1 = np.rint(f * 2048).astype(np.int64)
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), a0, a1


def resize_linear(x: np.ndarray, size: tuple[int, int], align_corners: bool = False,
                  scale: float | None = None) -> np.ndarray:
    """``... x H x W`` -> ``... x H' x W'`` bilinear, separable (rows then columns), no antialiasing; float32 in,
    float32 out (computed in float32 like torch on CPU; float64 inputs stay float64)."""
    H, W = x.shape[-2:]
    Ho, Wo = int(size[0]), int(size[1])
    if (H, W) == (Ho, Wo) and not scale:
        return x
    dt = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    x = x.astype(dt, copy=False)
    r0, r1, rw = _axis(H, Ho, align_corners, scale)
    c0, c1, cw = _axis(W, Wo, align_corners, scale)
    rw, cw = rw.astype(dt)[:, None], cw.astype(dt)
    rows = x[..., r0, :] * (1 - rw) + x[..., r1, :] * rw
    return rows[..., c0] * (1 - cw) + rows[..., c1] * cw


def resize_u8_like_cv2(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x C uint8 -> H' x W' x C uint8 equal to ``cv2.resize(image, (W', H'), interpolation=cv2.INTER_LINEAR)``
    (what mmcv's ``imresize`` / ``imrescale`` call), in OpenCV's own integer arithmetic: 11-bit weights, the
    horizontal pass in int32, the vertical pass as its vectorized kernel computes it
    (((S0 >> 4) b0 >> 16) + ((S1 >> 4) b1 >> 16) + 2) >> 2. Bit-exact on the test photos (opencv 4.11, x86
    SSE/AVX2; NEON builds the same universal intrinsics); the scalar formula OpenCV keeps for builds without
    SIMD rounds differently by at most 1 grey level."""
    Ho, Wo = int(size[0]), int(size[1])
    x = image.astype(np.int64)
    c0, c1, ca0, ca1 = _cv2_axis(image.shape[1], Wo, True)
    r0, r1, ra0, ra1 = _cv2_axis(image.shape[0], Ho, False)
    shape = (1, -1) + (1,) * (image.ndim - 2)
    rows = x[:, c0] * ca0.reshape(shape) + x[:, c1] * ca1.reshape(shape)  # H x W' (x C), scale 2048
    b0, b1 = ra0.reshape((-1,) + (1,) * (image.ndim - 1)), ra1.reshape((-1,) + (1,) * (image.ndim - 1))
    out = ((((rows[r0] >> 4) * b0) >> 16) + (((rows[r1] >> 4) * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def argmax_resized(maps: np.ndarray, size: tuple[int, int], align_corners: bool,
                   background: float | None = None) -> np.ndarray:
    """C x h x w -> H x W int32: the argmax of the maps resized by :func:`resize_linear`, one map at a time
    (memory H x W, not C x H x W); ties keep the lower index as argmax does. With ``background``, pixels whose
    best value is below it get label C."""
    best = resize_linear(maps[:1], size, align_corners)[0]
    label_map = np.zeros(best.shape, np.int32)
    for c in range(1, maps.shape[0]):
        up = resize_linear(maps[c:c + 1], size, align_corners)[0]
        better = up > best
        best[better] = up[better]
        label_map[better] = c
    if background is not None:
        label_map[best < np.float32(background)] = maps.shape[0]
    return label_map
