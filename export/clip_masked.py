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
"""

from __future__ import annotations

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
    crop_embeds NxD)``."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("clip_masked does not support attentional-pool CLIP towers (CoCa); "
                             "use a ViT CLIP with pool_type 'tok' or 'avg'")
        pool = getattr(visual, "pool_type", None)
        if pool not in ("tok", "avg"):
            raise ValueError(f"clip_masked needs a CLIP vision tower with pool_type 'tok' or 'avg', got {pool!r}")
        if pool == "tok":
            for blk in visual.transformer.resblocks:
                attn = getattr(blk, "attn", None)
                plain = isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim
                if not plain or hasattr(blk, "ln_attn"):
                    raise ValueError(f"clip_masked needs open_clip ResidualAttentionBlocks with nn.MultiheadAttention "
                                     f"in 'tok' towers, got {type(blk).__name__}")
        self.visual = visual
        self.pool_type = pool
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))
        gh, gw = visual.grid_size
        self.num_patches = int(gh * gw)

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

    def forward(self, image: torch.Tensor, patch_masks: torch.Tensor,
                crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = (patch_masks.flatten(1) > 0.5).to(image.dtype)  # N x P
        soft = self.masked_embeds(image, m)
        return F.normalize(soft, dim=-1), F.normalize(self.plain_embeds(crops), dim=-1)


def spec(image_size: tuple[int, int], grid: tuple[int, int], embed_dim: int, max_proposals: int = 32) -> ComponentSpec:
    """image 1x3xHxW (fixed batch 1), patch_masks / crops with a dynamic ``proposals`` axis in [1, max] (opt 8)."""
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
    H, W = image_size
    gh, gw = grid
    img = (1, 3, H, W)
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("image", "float32", img, img, img, img),
                dynamic_input("proposals", "patch_masks", (gh, gw), max_proposals, opt_n=min(8, max_proposals)),
                dynamic_input("proposals", "crops", (3, H, W), max_proposals, opt_n=min(8, max_proposals))),
        outputs=(TensorSpec("masked_embeds", "float32", ("proposals", embed_dim)),
                 TensorSpec("crop_embeds", "float32", ("proposals", embed_dim))),
        description="CLIP image tower scoring N proposals: masked (soft) embeddings of one image and plain "
                    "embeddings of N crops, L2-normalized",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid inputs: a random image, N random binary patch masks (each with >= 1 patch; the first one full) and
    N random crops. N = ``batch`` or the spec's ``which`` (min/opt/max) size."""
    if which not in ("min", "opt", "max"):
        raise ValueError(f"which must be 'min', 'opt' or 'max', got {which!r}")
    g = torch.Generator().manual_seed(seed)
    image_t, masks_t, crops_t = spec.inputs
    n = int(batch) if batch is not None else getattr(masks_t, which)[0]
    if n < 1:
        raise ValueError(f"batch (number of proposals) must be >= 1, got {n}")
    gh, gw = masks_t.shape[1:]
    image = torch.randn(image_t.opt, generator=g)
    masks = (torch.rand(n, gh * gw, generator=g) < 0.4).float()
    masks[torch.arange(n), torch.randint(0, gh * gw, (n,), generator=g)] = 1.0
    masks[0] = 1.0
    crops = torch.randn((n, *crops_t.shape[1:]), generator=g)
    return image, masks.reshape(n, gh, gw), crops


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
    info = {"preprocessing": pre, "context_length": ctx,
            "clip_masked": {"pool_type": wrapper.pool_type, "soft_readout": readout, "grid": list(grid),
                            "embed_dim": dim, "max_proposals": max_proposals,
                            "patch_mask": "N x gh x gw {0,1}, > 0.5 = in; >= 1 patch per proposal"}}
    return comps, info
