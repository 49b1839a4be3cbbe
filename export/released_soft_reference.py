"""Torch reference of the released Ref-Diff soft and hard branches (kodenii/Ref-Diff ``model/segmenter.py``
``get_clipsoft`` / ``get_cliphard`` and its modified CLIP, ``openai_clip/model.py`` ``get_mask_token`` /
``multi_class_forward`` / ``interpolate_pos_encoding``), written from that code for parity tests; independent of
the export wrappers
(:mod:`edgeseg.export.clip_masked`, :mod:`edgeseg.export.clip_hard`), which compute the same things (the soft
branch without an (N + HW)^2 mask).

    emb = released_soft_embeddings(clip.visual, image, masks, mean, std)   # N x D float32, unit norm
    hard = released_hard_embeddings(clip.visual, crops, mean, std, size=224)  # N x D float32, unit norm

What the released code does, step by step (and this function with it):

1. The whole image at its native resolution, no resize: ``ToTensor`` (uint8 / 255) then ``Normalize(mean, std)``
   -> 1 x 3 x H x W float32.
2. The N proposal masks (H x W) nearest-downsampled with ``F.interpolate(..., (H // stride, W // stride),
   mode="nearest")`` -> N x (gh * gw) in {0, 1}, row-major (the conv's patch order).
3. Patch embedding by the conv (its floor drops the last ``H % stride`` rows / columns), the class embedding
   prepended, then the position embeddings: the checkpoint's ``S x S`` grid as is when the image is square and
   the grid holds ``S^2`` patches, otherwise bicubically interpolated (``align_corners=False``) with the DINO
   ``+ 0.1`` scale factors ``((gh + 0.1) / S, (gw + 0.1) / S)`` (so the sampling follows those factors, not
   ``S / gh``); the class position embedding is kept.
4. ``prepare_multi_class_tokens(remove_cls=True)``: N copies of the embedded class token replace the original
   one: the sequence is ``[copy_1 .. copy_N, patch_1 .. patch_HW]``; ``ln_pre`` on every token.
5. Every block gets the additive (N + HW) x (N + HW) mask ``M`` (rows: queries), ``-inf`` where the released
   code puts a 1: copy i sees itself and the patches of mask i; patches see every patch and no copy::

       M = [[1 - I_N,       1 - masks],      # N x N, N x HW
            [ones(HW, N),   zeros(HW, HW)]]  # HW x N, HW x HW

6. ``ln_post`` and ``@ proj`` on every token; the first N (the copies) L2-normalized.

Avg-pool towers (``pool_type == "avg"``, e.g. ToyWorld's ``clip_toy``) have no class-token readout; edgeseg's
released-mode analogue runs steps 1-5 unchanged and reads proposal i as the tower's own pooling restricted to
the patches of mask i (``ln_post`` per token then the mean, or the mean then ``ln_post`` when
``final_ln_after_pool``), ``@ proj``, L2-normalized; an empty downsampled mask gives a zero vector.

The released hard branch (``get_cliphard``), :func:`released_hard_embeddings`: each proposal's crop (the biased
image times the mask, cut to its box, uint8) ``T.Resize(224)`` (shortest side to 224, the other side
``int(224 * long / short)``, PIL bilinear; the tower's own size for other CLIPs) + ``ToTensor`` + ``Normalize``,
then ``get_mask_token(crop, num_tokens=1)[:, 0:1]``: steps 3-4 with N = 1 (the one copy replaces the class token,
so the sequence is the plain ``[cls, patches]``), every block without a mask, ``ln_post`` + ``@ proj`` on token 0,
L2-normalized. Avg-pool towers: the tower's own pooling of that plain sequence (``ln_post`` per token then the
mean of the patch tokens, or the mean then ``ln_post``), ``@ proj``.

Deviations from the released run: float32 throughout (the released CLIP runs in float16 on CUDA); open_clip
towers (``visual``) instead of OpenAI's ``clip.load`` module (same architecture and weights layout).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def released_patch_masks(masks: np.ndarray, stride: tuple[int, int]) -> torch.Tensor:
    """N x H x W bool -> 1 x (gh * gw) x N long, ``gh = H // stride``: the released nearest downsampling."""
    n, h, w = masks.shape
    t = torch.as_tensor(np.asarray(masks, np.float32)).view(n, 1, h, w)
    small = F.interpolate(t, (h // stride[0], w // stride[1]), mode="nearest").long()
    return small.permute(1, 2, 3, 0).reshape(1, -1, n)


def released_attention_mask(obj_masks: torch.Tensor) -> torch.Tensor:
    """1 x HW x N {0, 1} -> 1 x (N + HW) x (N + HW) float32 additive mask (0 or -inf), built as released."""
    b, hw, n = obj_masks.shape
    t11 = torch.ones(b, n, n) - torch.eye(n).unsqueeze(0).repeat(b, 1, 1)
    m13 = 1 - obj_masks.permute(0, 2, 1).float()
    t21 = torch.ones(b, hw, n)
    f22 = torch.zeros(b, hw, hw)
    m = torch.cat([torch.cat([t11, m13], dim=2), torch.cat([t21, f22], dim=2)], dim=1)
    m[m == 1] = float("-inf")
    return m


def released_position_embedding(visual: nn.Module, h: int, w: int) -> torch.Tensor:
    """(1 + gh * gw) x C position embeddings for an h x w input: ``interpolate_pos_encoding`` as released."""
    pos = visual.positional_embedding
    n = pos.shape[0] - 1
    (kh, kw), (sh, sw) = _pair(visual.conv1.kernel_size), _pair(visual.conv1.stride)
    gh, gw = 1 + (h - kh) // sh, 1 + (w - kw) // sw
    if gh * gw == n and h == w:
        return pos
    side, dim = int(math.sqrt(n)), pos.shape[-1]
    grid = pos[1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / math.sqrt(n), (gw + 0.1) / math.sqrt(n)), mode="bicubic")
    if grid.shape[-2:] != (gh, gw):
        raise ValueError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, expected {(gh, gw)}")
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, dim)], dim=0)


def released_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """1 x 3 x H x W normalized -> 1 x (1 + gh * gw) x C: ``prepare_multi_class_tokens`` before its copies, i.e.
    conv patches (row-major), the class embedding prepended, + :func:`released_position_embedding` for H x W."""
    t = visual.conv1(x)
    t = t.reshape(1, t.shape[1], -1).permute(0, 2, 1)  # 1 x HW x C
    t = torch.cat([visual.class_embedding.view(1, 1, -1) + torch.zeros(1, 1, t.shape[-1]), t], dim=1)
    return t + released_position_embedding(visual, int(x.shape[-2]), int(x.shape[-1]))


@torch.no_grad()
def released_soft_embeddings(visual: nn.Module, image: np.ndarray, masks: np.ndarray,
                             mean: tuple[float, float, float] | list[float],
                             std: tuple[float, float, float] | list[float]) -> np.ndarray:
    """The released soft-branch embeddings of N proposals.

    visual: an open_clip ``VisionTransformer`` (``clip.visual``; pool_type "tok" or "avg"), in eval mode.
    image: H x W x 3 uint8 RGB (the unbiased image, as released). masks: N x H x W bool (N >= 1).
    mean, std: the CLIP normalization (3 floats each). Returns N x D float32, unit norm (zero rows for empty
    masks of an avg-pool tower). See the module docstring for every step."""
    image, masks = np.asarray(image), np.asarray(masks, bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or not len(masks):
        raise ValueError(f"masks must be N x {image.shape[0]} x {image.shape[1]} bool with N >= 1, got {masks.shape}")
    pool = getattr(visual, "pool_type", None)
    if pool not in ("tok", "avg") or getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"released_soft_embeddings needs a ViT tower with pool_type 'tok' or 'avg', got {pool!r}")
    n = len(masks)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(mean, dtype=torch.float32)[:, None, None])
         / torch.tensor(std, dtype=torch.float32)[:, None, None])[None]
    obj = released_patch_masks(masks, _pair(visual.conv1.stride))  # 1 x HW x N
    attn_mask = released_attention_mask(obj)[0]  # one image: the 2-D mask serves every head

    t = released_tokens(visual, x)
    if t.shape[1] - 1 != obj.shape[1]:
        raise ValueError(f"conv grid has {t.shape[1] - 1} patches but the downsampled masks {obj.shape[1]}: the "
                         f"tower's stride differs from its patch size")
    t = torch.cat([t[:, :1].expand(-1, n, -1), t[:, 1:]], dim=1)  # [copies, patches]: original class token gone
    t = visual.ln_pre(t)
    t = visual.transformer(t, attn_mask=attn_mask)
    proj = visual.proj
    if pool == "tok":
        out = visual.ln_post(t)[0, :n]
        out = out @ proj if proj is not None else out
    else:
        patches = t[0, n:]
        keep = obj[0].T.bool()  # N x HW
        rows = []
        for i in range(n):
            if not keep[i].any():
                rows.append(torch.zeros(proj.shape[1] if proj is not None else patches.shape[-1]))
                continue
            if visual.final_ln_after_pool:
                pooled = visual.ln_post(patches[keep[i]].mean(0))
            else:
                pooled = visual.ln_post(patches[keep[i]]).mean(0)
            rows.append(pooled @ proj if proj is not None else pooled)
        out = torch.stack(rows)
    return F.normalize(out, dim=-1).numpy().astype(np.float32)


@torch.no_grad()
def released_hard_embeddings(visual: nn.Module, crops: list[np.ndarray], mean: tuple[float, float, float] | list[float],
                             std: tuple[float, float, float] | list[float], size: int | None = None) -> np.ndarray:
    """The released hard-branch embeddings of N crops.

    visual: an open_clip ``VisionTransformer`` (pool_type "tok" or "avg"), in eval mode. crops: N arrays h x w x 3
    uint8 (sizes may differ). size: ``T.Resize(size)`` first (torchvision, shortest side, PIL bilinear), as
    ``get_cliphard`` with 224; None feeds the crops at their size. Returns N x D float32, unit norm. One plain
    forward per crop with :func:`released_position_embedding` (see the module docstring)."""
    from PIL import Image
    from torchvision import transforms as T

    pool = getattr(visual, "pool_type", None)
    if pool not in ("tok", "avg") or getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"released_hard_embeddings needs a ViT tower with pool_type 'tok' or 'avg', got {pool!r}")
    if not len(crops):
        raise ValueError("released_hard_embeddings needs at least one crop")
    steps = ([T.Resize(int(size))] if size is not None else []) + [T.ToTensor(), T.Normalize(mean, std)]
    transform = T.Compose(steps)
    rows = []
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"crop {i} must be h x w x 3 uint8 RGB, got {crop.shape} {crop.dtype}")
        x = transform(Image.fromarray(np.ascontiguousarray(crop)))[None]  # 1 x 3 x H x W
        # prepare_multi_class_tokens(num_classes=1, remove_cls=True): the one copy replaces the class token, so the
        # sequence stays [cls, patches]
        t = visual.transformer(visual.ln_pre(released_tokens(visual, x)))
        if pool == "tok":
            out = visual.ln_post(t)[0, 0]
        elif visual.final_ln_after_pool:
            out = visual.ln_post(t[0, 1:].mean(0))
        else:
            out = visual.ln_post(t[0, 1:]).mean(0)
        rows.append(out @ visual.proj if visual.proj is not None else out)
    return F.normalize(torch.stack(rows), dim=-1).numpy().astype(np.float32)
