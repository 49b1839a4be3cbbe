"""PyTorch references of the official inference pipelines, written from the authors' code, for the tests and
``benchmarks/official_full_export.py`` to hold the runtime (numpy + ONNX Runtime) to:

- :func:`lseg_multieval`: lang-seg's evaluation at one scale without flip (PyTorch-Encoding's
  ``MultiEvalModule.forward``): ToTensor + Normalize(0.5, 0.5) at the native size, bilinear
  (align_corners=True) to the long side ``base_size``, pad with black to the crop, windows of ``crop`` at
  ``int(crop * 2/3)``, logits summed and divided by the count, cropped, resized back (align_corners=True).
- :func:`tcl_slide`: TCL's evaluation (mmseg ``Resize(keep_ratio, (2048, 448))`` by OpenCV, ``Normalize``,
  ``slide_inference`` with crop 448 / stride 224) around :func:`tcl_generate_masks` (``TCL.generate_masks`` with
  apply_pamr and kp_w = 0.3: the last CLIP block with attention masked to the diagonal, as sclip does, PAMR
  as :func:`pamr_official` (the conv-kernel formulation of ``models/tcl/pamr.py``)).

Each returns the maps at the image size and the blended maps before that resize. Torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _normalize(image: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def lseg_multieval(model, image: np.ndarray, text: torch.Tensor, base_size: int, crop: int,
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 H x W x 3, unit-norm text C x D -> (logits 1 x C x H x W, blended logits 1 x C x h x w)."""
    img = _normalize(image, mean, std)
    _, _, h, w = img.shape
    stride = int(crop * 2.0 / 3.0)
    long_size = int(math.ceil(base_size * 1.0))
    if h > w:
        height, width, short_size = long_size, int(1.0 * w * long_size / h + 0.5), int(1.0 * w * long_size / h + 0.5)
    else:
        width, height, short_size = long_size, int(1.0 * h * long_size / w + 0.5), int(1.0 * h * long_size / w + 0.5)
    cur = F.interpolate(img, (height, width), mode="bilinear", align_corners=True)
    pad_values = -np.array(mean) / np.array(std)

    def pad(x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        ph, pw = max(crop - hh, 0), max(crop - ww, 0)
        return torch.cat([F.pad(x[:, i:i + 1], (0, pw, 0, ph), value=float(pad_values[i])) for i in range(c)], 1)

    pad_img = pad(cur) if short_size < crop or long_size <= crop else cur
    _, _, ph, pw = pad_img.shape
    h_grids = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
    w_grids = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
    outputs = torch.zeros(1, text.shape[0], ph, pw)
    count = torch.zeros(1, 1, ph, pw)
    for idh in range(h_grids):
        for idw in range(w_grids):
            h0, w0 = idh * stride, idw * stride
            h1, w1 = min(h0 + crop, ph), min(w0 + crop, pw)
            out = model(pad(pad_img[:, :, h0:h1, w0:w1]), text)
            outputs[:, :, h0:h1, w0:w1] += out[:, :, :h1 - h0, :w1 - w0]
            count[:, :, h0:h1, w0:w1] += 1
    blended = (outputs / count)[:, :, :height, :width]
    return F.interpolate(blended, (h, w), mode="bilinear", align_corners=True), blended


def _shift_kernels(center: float, neighbour: float, with_center: bool) -> torch.Tensor:
    """PAMR's 3x3 shift kernels: one per neighbour (8), centre weight ``center``, neighbour ``neighbour``; with
    ``with_center`` a ninth plain copy of the centre (LocalStDev's 9 kernels, row-major)."""
    ks = []
    for i in range(9):
        if i == 4 and not with_center:
            continue
        k = torch.zeros(1, 3, 3)
        if with_center:
            k.view(-1)[i] = 1.0
        else:
            k[0, 1, 1] = center
            k.view(-1)[i] += neighbour
        ks.append(k)
    return torch.stack(ks)


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations) -> torch.Tensor:
    B, K, H, W = x.shape
    x = x.reshape(B * K, 1, H, W)
    outs = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(outs, 1).view(B, K, -1, H, W)


@torch.no_grad()
def pamr_official(x: torch.Tensor, mask: torch.Tensor, iterations: int = 10,
                  dilations=(1, 2, 4, 8, 12, 24)) -> torch.Tensor:
    """models/tcl/pamr.py PAMR: x B x K x H x W, mask B x C x h x w (bilinear, align_corners=True, to H x W)."""
    mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=True)
    std = _local(x, _shift_kernels(0, 0, True), dilations).std(2, keepdim=True)
    aff = -_local(x, _shift_kernels(1.0, -1.0, False), dilations).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    copy = _shift_kernels(0.0, 1.0, False)
    for _ in range(iterations):
        mask = (_local(mask, copy, dilations) * aff).sum(2)
    return mask


@torch.no_grad()
def tcl_generate_masks(model, image: torch.Tensor, text: torch.Tensor, apply_pamr: bool = True,
                       kp_w: float = 0.3) -> torch.Tensor:
    """TCL.generate_masks of :class:`edgeseg.train.tcl_official.TCLOfficial` weights: image 1 x 3 x H x W
    (normalized), text C x D unit norm -> masks 1 x C x H x W. The MaskCLIP blocks run as sclip runs them:
    attention with a diagonal mask (not the value-path shortcut the model uses)."""
    H, W = image.shape[2:]
    p = model.patch
    l = r = t = b = 0
    if W % p:
        lr = p - W % p
        l, r = lr // 2, lr - lr // 2
    if H % p:
        tb = p - H % p
        t, b = tb // 2, tb - tb // 2
    if any((l, r, t, b)):
        image = F.pad(image, (l, r, t, b))
    pH, pW = image.shape[2:]
    visual = model.clip_image_encoder.clip_visual
    gh, gw = pH // p, pW // p
    x = visual.conv1(image).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(1, 1, x.shape[-1]), x], 1)
    x = visual.ln_pre(x + model._pos_embed(gh, gw))
    diag = torch.full((x.shape[1], x.shape[1]), float("-inf")).fill_diagonal_(0)
    blocks = visual.transformer.resblocks
    feats = []
    for i, blk in enumerate(blocks):
        x = blk(x, attn_mask=diag if i == len(blocks) - 1 else None)
        feats.append(x)
    image_feat = feats[model.freeze - 1]
    y = image_feat
    mblocks = model.masker.image_encoder.backbone.transformer.resblocks
    for i, blk in enumerate(mblocks):
        y = blk(y, attn_mask=diag if i == len(mblocks) - 1 else None)
    y = y[:, 1:].transpose(1, 2).reshape(1, -1, gh, gw)
    emb = F.normalize(model.masker.image_encoder.decoder(y), dim=1)
    text = F.normalize(text, dim=-1)
    mask = torch.sigmoid(torch.einsum("bchw,nc->bnhw", emb, text) * model.masker.sim2mask.w + model.masker.sim2mask.b)
    if apply_pamr:
        small = F.interpolate(image, mask.shape[-2:], mode="bilinear", align_corners=True)
        mask = pamr_official(small, mask)
    if kp_w:
        clip_feat = x[:, 1:].transpose(1, 2).reshape(1, -1, gh, gw)
        dense = F.normalize(model.clip_image_encoder.clip_proj(clip_feat), dim=1)
        kp = torch.sigmoid((torch.einsum("bchw,nc->bnhw", dense, text) - 0.25) * 10.0)
        mask = kp_w * F.interpolate(kp, mask.shape[2:], mode="bilinear") + (1.0 - kp_w) * mask
    mask = F.interpolate(mask, (pH, pW), mode="bilinear")
    return mask[:, :, t:t + H, l:l + W]


@torch.no_grad()
def tcl_slide(model, image: np.ndarray, text: torch.Tensor, scale=(2048, 448), crop: int = 448, stride: int = 224,
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
              apply_pamr: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 H x W x 3 -> (masks 1 x C x H x W, blended masks 1 x C x h x w): mmseg's test pipeline and
    slide_inference around :func:`tcl_generate_masks`."""
    import cv2

    h0, w0 = image.shape[:2]
    f = min(max(scale) / max(h0, w0), min(scale) / min(h0, w0))
    nw, nh = int(w0 * float(f) + 0.5), int(h0 * float(f) + 0.5)
    img = _normalize(cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), mean, std)
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = torch.zeros(1, text.shape[0], h_img, w_img)
    count = torch.zeros(1, 1, h_img, w_img)
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out = tcl_generate_masks(model, img[:, :, y1:y2, x1:x2], text, apply_pamr)
            preds += F.pad(out, (int(x1), int(w_img - x2), int(y1), int(h_img - y2)))
            count[:, :, y1:y2, x1:x2] += 1
    blended = preds / count
    return F.interpolate(blended, (h0, w0), mode="bilinear", align_corners=False), blended
