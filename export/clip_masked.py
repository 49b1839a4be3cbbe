"""Component ``clip_masked``: the CLIP image tower scoring N mask proposals at once (Ref-Diff's
discriminative branch).

Inputs
- ``image``        1 x 3 x H x W float32, normalized RGB (the runtime passes x * P, the position-biased image)
- ``patch_masks``  N x gh x gw float32 in {0, 1}: proposal masks at the patch grid (values > 0.5 count as in)
- ``crops``        N x 3 x H x W float32, normalized (the runtime's x * M or bbox-cropped-and-resized inputs)

Outputs (unit norm along D)
- ``masked_embeds`` N x D: soft branch f_M(x * P), one embedding per proposal
- ``crop_embeds``   N x D: plain image embedding of each crop (== open_clip ``encode_image(crop, normalize=True)``)

Soft branch, class-token towers (``pool_type == "tok"``, e.g. ViT-B-16), as in the released Ref-Diff code: one
sequence ``[cls, patches (P), cls copies (N)]`` runs through every block with an additive attention mask built
in-graph from ``patch_masks``. The original class token and the patches attend to each other exactly as in the
plain forward (the copies are invisible to them), so patch features equal the plain forward; copy i attends
only to itself and the patches inside mask i. Readout: ``ln_post(copy_i) @ proj``. With a full mask, copy i
follows the same computation as the plain class token, so it equals ``encode_image``. Masked logits use a
finite -1e4 (exp underflows to exactly 0 in float32; also safe in float16 builds).

Avg-pool adaptation (``pool_type == "avg"``, e.g. the ToyWorld ``toy-tiny`` CLIP): the class token is not the
readout there, so the soft branch is a masked average of the final patch tokens of the plain forward, in the
tower's own order (open_clip ``_pool``: ``ln_post`` per token then mean, or mean then ``ln_post`` when
``final_ln_after_pool``), then ``@ proj``. The denominator is clamped to >= 1 so an empty mask gives a zero
vector (normalized to 0), never NaN. A full mask equals ``encode_image``.

The copies live after the patches so every slice in the graph is static (no shape arithmetic when traced).

Released soft branch (``soft_branch="released_native"``; inputs ``native_image`` 1 x 3 x H x W with H, W dynamic
and ``native_masks`` N x gh x gw, ``gh = H // stride``; output ``native_embeds`` N x D), as kodenii/Ref-Diff's
``get_clipsoft`` (reference: :mod:`.released_soft_reference`): the whole image at its own size; position
embeddings kept when the image is square with ``S^2`` patches, else bicubic (A = -0.75, ``align_corners=False``)
with the DINO ``+ 0.1`` scale factors ``(gh + 0.1) / S`` -- written in-graph as two gh x S / gw x S weight matrices
(MatMul, Floor, Clip, Equal: no Resize op, no shape arithmetic); the original class token removed; N class-token
copies, copy i attending to itself and the patches of mask i, patches to every patch and never to a copy.
Computed as two streams per block (patches alone; copies against [patches, itself]) instead of the released
(N + HW)^2 mask: the same attention, no N x N or HW x N logits. Avg-pool towers: the released sequence's patches
(no class token at all: patches never see one) pooled inside mask i as the tower pools, ``@ proj``; an empty
downsampled mask gives a zero vector. Native size range: min ``2 x stride`` per side, opt the tower's image size,
max ``native_max_side`` (default 6 x the image size: 1344 px for 224-px CLIPs), each side floored to a multiple
of the stride so every profile shape is consistent with its mask grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "clip_masked"
MASK_VALUE = -1.0e4  # additive attention logit for "not attended" (finite: no inf/NaN in any precision)


class ClipMaskedWrapper(nn.Module):
    """Export-only wrapper around an open_clip ``VisionTransformer`` (``clip.visual``); no data-dependent
    control flow. ``forward(image 1x3xHxW, patch_masks Nxghxgw, crops Nx3xHxW) -> (masked_embeds NxD,
    crop_embeds NxD)``. Subclassed by :class:`edgeseg.export.clip_hard.ClipHardWrapper` (its errors name
    ``COMPONENT`` and ``POSITION_USER``)."""

    COMPONENT = NAME  # the component named in the constructor's errors
    POSITION_USER = "released soft branch"  # what needs the square position grid

    def __init__(self, visual: nn.Module):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError(f"{self.COMPONENT} does not support attentional-pool CLIP towers (CoCa); "
                             "use a ViT CLIP with pool_type 'tok' or 'avg'")
        pool = getattr(visual, "pool_type", None)
        if pool not in ("tok", "avg"):
            raise ValueError(f"{self.COMPONENT} needs a CLIP vision tower with pool_type 'tok' or 'avg', "
                             f"got {pool!r}")
        for blk in visual.transformer.resblocks:  # the soft branches write every block out by hand
            attn = getattr(blk, "attn", None)
            plain = isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim
            if not plain or hasattr(blk, "ln_attn"):
                raise ValueError(f"{self.COMPONENT} needs open_clip ResidualAttentionBlocks with "
                                 f"nn.MultiheadAttention, got {type(blk).__name__}")
        self.visual = visual
        self.pool_type = pool
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))
        gh, gw = visual.grid_size
        self.num_patches = int(gh * gw)
        side = math.isqrt(int(visual.positional_embedding.shape[0]) - 1)
        if side * side != visual.positional_embedding.shape[0] - 1:
            raise ValueError(f"{self.COMPONENT}'s {self.POSITION_USER} needs a square position-embedding grid, got "
                             f"{visual.positional_embedding.shape[0] - 1} patch positions")
        self.pos_side = side  # S: the checkpoint's S x S position grid
        self.stride = tuple(int(v) for v in visual.conv1.stride)

    # -- helpers ----------------------------------------------------------------------------------------
    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x L x C through every residual block (plain forward). 'tok' towers run :meth:`_block`, so the
        soft and crop paths share one set of weight initializers in the ONNX file."""
        if self.pool_type == "tok":
            for blk in self.visual.transformer.resblocks:
                x = self._block(blk, x)
            return x
        if not self.batch_first:
            x = x.transpose(0, 1)
        for blk in self.visual.transformer.resblocks:
            x = blk(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x

    def _block(self, blk: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One open_clip ``ResidualAttentionBlock`` on x: B x L x C (optional L x L additive mask), written out
        with head reshapes on the last axis only (a traced ``nn.MultiheadAttention`` froze L in the legacy
        export)."""
        attn = blk.attn
        heads, c = attn.num_heads, attn.embed_dim
        hd = c // heads
        qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = (t.unflatten(-1, (heads, hd)).transpose(-3, -2) for t in qkv.chunk(3, dim=-1))  # B x h x L x hd
        logits = (q * hd ** -0.5) @ k.transpose(-1, -2)
        w = torch.softmax(logits + attn_mask if attn_mask is not None else logits, dim=-1)
        o = attn.out_proj((w @ v).transpose(-3, -2).flatten(-2))
        x = x + blk.ls_1(o)
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def _proj(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.visual.proj if self.visual.proj is not None else x

    def plain_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's own forward: B x 3 x H x W -> B x D (unnormalized)."""
        x = self._blocks(self.visual._embeds(images))
        return self._proj(self.visual._pool(x)[0])

    def attention_mask(self, m: torch.Tensor) -> torch.Tensor:
        """The (1 + P + N) x (1 + P + N) additive mask of the sequence [cls, patches, copies]; m: N x P in {0,1}.

        Built from static ops only (the N axis comes from ``m`` by broadcasting, never from shape arithmetic).
        """
        p1 = 1 + self.num_patches
        zero_n = m[:, 0] * 0.0  # N zeros (carries the dynamic N axis)
        head = torch.zeros(p1, 1, dtype=m.dtype, device=m.device)
        top = torch.cat([torch.zeros(p1, p1, dtype=m.dtype, device=m.device),
                         head + zero_n[None, :] + MASK_VALUE], dim=1)  # cls/patches never see copies
        idx = torch.cumsum(zero_n + 1.0, dim=0)
        eye = (idx[:, None] == idx[None, :]).to(m.dtype)
        bottom = torch.cat([zero_n[:, None] + MASK_VALUE,  # copies do not see the original cls
                            (1.0 - m) * MASK_VALUE,  # copy i sees the patches of mask i
                            (1.0 - eye) * MASK_VALUE], dim=1)  # ... and itself only
        return torch.cat([top, bottom], dim=0)

    def masked_sequence(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """'tok' towers: embedded tokens x 1 x (1 + P) x C and masks m N x P -> final tokens of the sequence
        [cls, patches, N class-token copies], 1 x (1 + P + N) x C."""
        copies = (m[:, :1] * 0.0 + 1.0) * x[0, :1]  # N x C copies of the embedded class token
        seq = torch.cat([x, copies[None]], dim=1)
        mask = self.attention_mask(m)
        for blk in self.visual.transformer.resblocks:
            seq = self._block(blk, seq, mask)
        return seq

    def masked_embeds(self, image: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Soft branch: image 1 x 3 x H x W, m N x P binary -> N x D (unnormalized)."""
        x = self.visual._embeds(image)  # 1 x (1 + P) x C
        if self.pool_type == "avg":
            tokens = self._blocks(x)[0, 1:]  # P x C
            denom = m.sum(dim=1, keepdim=True).clamp(min=1.0)
            if self.final_ln_after_pool:
                pooled = self.visual.ln_post((m @ tokens) / denom)
            else:
                pooled = (m @ self.visual.ln_post(tokens)) / denom
            return self._proj(pooled)
        seq = self.masked_sequence(x, m)
        return self._proj(self.visual.ln_post(seq[0, 1 + self.num_patches:]))

    # -- released soft branch (native size) ----------------------------------------------------------------
    def _cubic_weights(self, ones: torch.Tensor) -> torch.Tensor:
        """n x S bicubic weights (A = -0.75, half-pixel, border clamped) resampling the S position rows to n,
        ``ones``: n ones (carries the dynamic n). The scale is torch's for ``scale_factor=(n + 0.1) / S``."""
        s = self.pos_side
        n = ones.sum()
        i = torch.cumsum(ones, dim=0) - 1.0
        real = (s / (n + 0.1)) * (i + 0.5) - 0.5
        base = torch.floor(real)
        t = real - base
        a = -0.75

        def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

        def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
            return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

        cols = torch.arange(s, dtype=ones.dtype, device=ones.device)
        out = ones[:, None] * cols[None, :] * 0.0
        for k, w in enumerate((far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t))):
            tap = torch.clamp(base + (k - 1), 0.0, float(s - 1))
            out = out + w[:, None] * (tap[:, None] == cols[None, :]).to(ones.dtype)
        return out

    def native_position(self, feat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(gh * gw) x C patch position embeddings for the conv grid ``feat`` 1 x C x gh x gw of ``image``
        1 x 3 x H x W: the checkpoint's grid when H == W and gh * gw == S^2, else bicubic (released rule)."""
        s = self.pos_side
        pos = self.visual.positional_embedding[1:]  # S^2 x C
        c = pos.shape[-1]
        rows, cols = torch.ones_like(feat[0, 0, :, 0]), torch.ones_like(feat[0, 0, 0, :])
        h, w = torch.ones_like(image[0, 0, :, 0]).sum(), torch.ones_like(image[0, 0, 0, :]).sum()
        keep = (rows.sum() * cols.sum() == float(s * s)) & (h == w)
        idx = torch.arange(s, dtype=feat.dtype, device=feat.device)

        def weights(ones: torch.Tensor) -> torch.Tensor:  # identity rows when kept (then n == S)
            eye = ((torch.cumsum(ones, dim=0) - 1.0)[:, None] == idx[None, :]).to(feat.dtype)
            return torch.where(keep, eye, self._cubic_weights(ones))

        t = (weights(rows) @ pos.reshape(s, s * c)).reshape(-1, s, c)  # gh x S x C
        return torch.matmul(weights(cols)[None], t).reshape(-1, c)  # (gh * gw) x C, row-major

    def _two_stream_block(self, blk: nn.Module, xp: torch.Tensor, xc: torch.Tensor | None,
                          bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block on patches xp 1 x P x C (attending to patches only) and copies xc 1 x N x C (copy i
        attending to itself and to the patches where ``bias`` N x P is 0, not where it is MASK_VALUE)."""
        attn = blk.attn
        heads, c = attn.num_heads, attn.embed_dim
        hd = c // heads

        def split(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # 1 x h x L x hd each
            qkv = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
            return tuple(t.unflatten(-1, (heads, hd)).transpose(-3, -2) for t in qkv.chunk(3, dim=-1))

        def finish(x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
            x = x + blk.ls_1(attn.out_proj(o.transpose(-3, -2).flatten(-2)))
            return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

        qp, kp, vp = split(xp)
        op = torch.softmax((qp * hd ** -0.5) @ kp.transpose(-1, -2), dim=-1) @ vp
        if xc is None or bias is None:
            return finish(xp, op), None
        qc, kc, vc = split(xc)
        qc = qc * hd ** -0.5
        lp = qc @ kp.transpose(-1, -2) + bias  # 1 x h x N x P
        ls = (qc * kc).sum(-1, keepdim=True)  # 1 x h x N x 1: the copy's own logit
        top = torch.maximum(lp.amax(-1, keepdim=True), ls)
        ep, es = torch.exp(lp - top), torch.exp(ls - top)
        oc = (ep @ vp + es * vc) / (ep.sum(-1, keepdim=True) + es)
        return finish(xp, op), finish(xc, oc)

    def native_embeds(self, image: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Released soft branch: image 1 x 3 x H x W (any size in the spec's range), m N x (gh * gw) binary at
        the conv grid -> N x D (unnormalized)."""
        v = self.visual
        feat = v.conv1(image)  # 1 x C x gh x gw
        patches = feat.flatten(2).transpose(1, 2) + self.native_position(feat, image)[None]  # 1 x P x C
        patches = v.ln_pre(v.patch_dropout(patches))
        if self.pool_type == "avg":
            for blk in v.transformer.resblocks:
                patches, _ = self._two_stream_block(blk, patches, None, None)
            tokens = patches[0]
            denom = m.sum(dim=1, keepdim=True).clamp(min=1.0)
            if self.final_ln_after_pool:
                return self._proj(v.ln_post((m @ tokens) / denom))
            return self._proj((m @ v.ln_post(tokens)) / denom)
        cls = v.class_embedding + v.positional_embedding[0]
        copies = v.ln_pre((m[:, :1] * 0.0 + 1.0) * cls)[None]  # 1 x N x C
        bias = (1.0 - m) * MASK_VALUE  # N x P
        for blk in v.transformer.resblocks:
            patches, copies = self._two_stream_block(blk, patches, copies, bias)
        return self._proj(v.ln_post(copies[0]))

    def forward(self, image: torch.Tensor, patch_masks: torch.Tensor, crops: torch.Tensor,
                native_image: torch.Tensor | None = None,
                native_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """-> (masked_embeds, crop_embeds) and, with ``native_image`` / ``native_masks``, native_embeds."""
        m = (patch_masks.flatten(1) > 0.5).to(image.dtype)  # N x P
        soft = self.masked_embeds(image, m)
        out = (F.normalize(soft, dim=-1), F.normalize(self.plain_embeds(crops), dim=-1))
        if native_image is None or native_masks is None:
            return out
        nm = (native_masks.flatten(1) > 0.5).to(native_image.dtype)  # N x (gh * gw)
        return (*out, F.normalize(self.native_embeds(native_image, nm), dim=-1))


def native_range(image_size: tuple[int, int], stride: tuple[int, int],
                 native_max_side: int | None = None) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(min, opt, max) H x W of ``native_image``: 2 x stride, the image size, ``native_max_side`` (default
    6 x the longer image side), each floored to a multiple of the stride."""
    cap = 6 * max(image_size) if native_max_side is None else int(native_max_side)
    lo = (2 * stride[0], 2 * stride[1])
    opt = (image_size[0] // stride[0] * stride[0], image_size[1] // stride[1] * stride[1])
    hi = (cap // stride[0] * stride[0], cap // stride[1] * stride[1])
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise ValueError(f"native_max_side {cap} must be >= the image size {tuple(image_size)}")
    return lo, opt, hi


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_proposals: int = 32,
         native_max_side: int | None = None) -> ComponentSpec:
    """image 1x3xHxW (fixed batch 1), patch_masks / crops with dynamic axes ``proposals`` / ``crops`` in [1, max]
    (opt 8); the released soft branch's native_image 1 x 3 x height x width and native_masks native_proposals x
    grid_h x grid_w over :func:`native_range` (the stride is image_size // grid). The three branches are
    independent, so their proposal axes are named apart: the runtime feeds a branch whose output it does not read
    one proposal instead of N (the released preset reads only native_embeds and clip_hard's embeddings)."""
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
    H, W = image_size
    gh, gw = grid
    stride = (H // gh, W // gw)
    lo, opt, hi = native_range(image_size, stride, native_max_side)
    opt_n = min(8, max_proposals)
    img = (1, 3, H, W)
    cells = [(a // stride[0], b // stride[1]) for a, b in (lo, opt, hi)]
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("image", "float32", img, img, img, img),
                dynamic_input("proposals", "patch_masks", (gh, gw), max_proposals, opt_n=opt_n),
                dynamic_input("crops", "crops", (3, H, W), max_proposals, opt_n=opt_n),
                TensorSpec("native_image", "float32", (1, 3, "height", "width"), (1, 3, *lo), (1, 3, *opt),
                           (1, 3, *hi)),
                TensorSpec("native_masks", "float32", ("native_proposals", "grid_h", "grid_w"), (1, *cells[0]),
                           (opt_n, *cells[1]), (max_proposals, *cells[2]))),
        outputs=(TensorSpec("masked_embeds", "float32", ("proposals", embed_dim)),
                 TensorSpec("crop_embeds", "float32", ("crops", embed_dim)),
                 TensorSpec("native_embeds", "float32", ("native_proposals", embed_dim))),
        description="CLIP image tower scoring N proposals: masked (soft) embeddings of one image, plain "
                    "embeddings of N crops and the released soft branch at the image's native size, L2-normalized",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None, seed: int = 0,
                   native_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Valid inputs: a random image, N random binary patch masks (each with >= 1 patch; the first one full), N
    random crops, a random native image (``native_hw`` or the spec's ``which`` size) and N native masks at its
    grid (floor(H / stride); random, the first full). N = ``batch`` or the spec's ``which`` (min/opt/max) size."""
    if which not in ("min", "opt", "max"):
        raise ValueError(f"which must be 'min', 'opt' or 'max', got {which!r}")
    g = torch.Generator().manual_seed(seed)
    image_t, masks_t, crops_t, native_t, nmasks_t = spec.inputs
    n = int(batch) if batch is not None else getattr(masks_t, which)[0]
    if n < 1:
        raise ValueError(f"batch (number of proposals) must be >= 1, got {n}")
    gh, gw = masks_t.shape[1:]
    image = torch.randn(image_t.opt, generator=g)
    masks = (torch.rand(n, gh * gw, generator=g) < 0.4).float()
    masks[torch.arange(n), torch.randint(0, gh * gw, (n,), generator=g)] = 1.0
    masks[0] = 1.0
    crops = torch.randn((n, *crops_t.shape[1:]), generator=g)
    stride = (native_t.opt[2] // nmasks_t.opt[1], native_t.opt[3] // nmasks_t.opt[2])
    h, w = native_hw if native_hw is not None else getattr(native_t, which)[2:]
    native = torch.randn((1, 3, h, w), generator=g)
    nm = (torch.rand(n, h // stride[0], w // stride[1], generator=g) < 0.4).float()
    nm[0] = 1.0
    return image, masks.reshape(n, gh, gw), crops, native, nm


def refdiff_clip_components(checkpoint: str | Path, max_proposals: int = 32
                            ) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """The CLIP side of a Ref-Diff bundle: ``{"clip_text", "clip_masked"} -> (wrapper, spec)`` and info.

    ``checkpoint``: a CLIP checkpoint folder or bundled name (``clip_toy``), or a registered config
    (``ViT-B-16`` random init, ``ViT-B-16:/path/open_clip.pt``). info: preprocessing, context_length and
    ``clip_masked`` facts (soft-branch readout, grid, embed_dim, max_proposals).
    """
    from edgeseg.train.clip import clip_config, clip_preprocessing, create_clip, load_clip, registered_clip

    from edgeseg.export import clip_text

    registered = registered_clip(checkpoint)
    if registered:
        clip = create_clip(*registered)
        pre = clip_preprocessing(registered[0], clip)
        ctx = clip_config(registered[0])["text_cfg"]["context_length"]
    else:
        clip, cfg = load_clip(checkpoint)
        pre = cfg.get("preprocessing") or clip_preprocessing(cfg["architecture"]["name"], clip)
        ctx = cfg.get("tokenizer", {}).get("context_length") or int(clip.context_length)
    visual = clip.visual
    size, grid = tuple(pre["image_size"]), tuple(visual.grid_size)
    dim = int(visual.output_dim)
    wrapper = ClipMaskedWrapper(visual)
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(clip), clip_text.spec(ctx, dim)),
        NAME: (wrapper, spec(size, grid, dim, max_proposals)),
    }
    readout = "cls-copies" if wrapper.pool_type == "tok" else "masked-avg"
    native = comps[NAME][1].input("native_image")
    info = {"preprocessing": pre, "context_length": ctx,
            "clip_masked": {"pool_type": wrapper.pool_type, "soft_readout": readout, "grid": list(grid),
                            "embed_dim": dim, "max_proposals": max_proposals,
                            "patch_mask": "N x gh x gw {0,1}, > 0.5 = in; >= 1 patch per proposal",
                            "native_stride": list(wrapper.stride),
                            "native_readout": "released-cls-copies" if wrapper.pool_type == "tok"
                            else "released-masked-avg",
                            "native_mask": f"N x floor(H / stride) x floor(W / stride) nearest-sampled, H x W in "
                                           f"[{native.min[2]}x{native.min[3]}, {native.max[2]}x{native.max[3]}]"}}
    return comps, info
