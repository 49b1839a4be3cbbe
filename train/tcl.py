"""TCL (Text-grounded Contrastive Learning, Cha et al. 2023) on a frozen open_clip CLIP.

Shapes (p = patch size, D = CLIP embedding width, W = vision width):
- images B x 3 x H x W (normalized); frozen CLIP tokens before its last block B x (1 + h w) x W, h = H/p.
- MaskCLIP dense features (frozen CLIP, value path in the last block) B x D x h x w.
- masker: a trainable copy of CLIP's last block (value path, as MaskCLIP) + ln_post, then the grounding
  decoder: gated residual conv blocks (LN over channels -> GELU -> 3x3 conv, times tanh(gate), gate initialised
  at 0; the conv step twice per block for ViT-B-16 as released, once for the CPU-trained toy) with nearest x2
  upsampling in the first log2(p/4) blocks, so the output is at 1/4 of the input; then a 1x1 projection
  initialised from CLIP's ``proj``. Grounding embeddings B x D x H/4 x W/4.
  At initialisation (gates 0) the grounding embeddings are MaskCLIP's, nearest-upsampled.
- mask of text t at pixel i: sigmoid(w cos(g_i, t) + b), w and b learnable (init 10, -2.5); hard masks for
  training by Gumbel-sigmoid (tau 1) with a straight-through gradient.
- inference mask (:meth:`TCL.head`): kp * sigmoid((cos_maskclip - 0.25) * 10) + (1 - kp) * TCL mask, kp = 0.3,
  the MaskCLIP term bilinearly upsampled to H/4.

Losses (:meth:`TCL.losses`, weights of the paper): image-level TCL 0.1 (InfoNCE between the frozen CLIP's
embedding of hard-mask x image and the text), feature-level TCL 0.1 (InfoNCE between mask-pooled grounding
embeddings and the text, learnable temperature init 0.07), area prior 0.4 (|mean positive mask - 0.4| +
|mean negative mask - 0|), total variation 1.0 (of the masks and of the grounding embeddings). Targets may be
multi-positive (several images in a batch fit "circle").

:func:`pamr` is the PyTorch reference of PAMR (Araslanov & Roth 2020), the refinement the runtime runs in numpy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clip import _value_path, clip_config, encode_image_features

PAMR_ITERATIONS = 10
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)
LOSS_WEIGHTS = {"image_tcl": 0.1, "feature_tcl": 0.1, "area": 0.4, "tv": 1.0}  # the paper's defaults


@dataclass
class TCLConfig:
    clip: str = "toy-tiny"  # CLIP config name (clip.list_models())
    decoder_blocks: int = 2  # gated residual conv blocks; the first log2(patch / 4) upsample x2
    double_conv: bool = False  # two norm-GELU-conv steps per block (the released decoder), else one (CPU budget)
    init_w: float = 10.0
    init_b: float = -2.5
    gumbel_tau: float = 1.0
    temperature: float = 0.07  # initial temperature of both TCL InfoNCE terms (learnable)
    area_prior: float = 0.4
    kp_weight: float = 0.3  # inference: weight of the frozen MaskCLIP similarity in the mask
    kp_offset: float = 0.25
    kp_scale: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TCLConfig":
        return cls(**d)


TCL_CONFIGS = {"toy-tiny": TCLConfig(), "ViT-B-16": TCLConfig(clip="ViT-B-16", double_conv=True)}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a B x C x H x W map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedResConv(nn.Module):
    """x -> up2(x) (optional) -> x + tanh(gate) * conv(GELU(LN(x))) [applied twice when ``double``]."""

    def __init__(self, c: int, upsample: bool, double: bool = True):
        super().__init__()
        self.upsample = upsample
        steps = 2 if double else 1
        self.norms = nn.ModuleList(LayerNorm2d(c) for _ in range(steps))
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(steps))
        self.gate = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        y = x
        for norm, conv in zip(self.norms, self.convs):
            y = conv(F.gelu(norm(y)))
        return x + torch.tanh(self.gate) * y


class TCL(nn.Module):
    """Frozen CLIP (``self.clip``, not trained, not saved) + trainable masker, decoder and mask head."""

    def __init__(self, config: TCLConfig, clip: nn.Module):
        super().__init__()
        self.config = config
        self.clip = clip.eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        visual = clip.visual
        width = visual.transformer.width
        self.embed_dim = clip_config(config.clip)["embed_dim"]
        patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size
        ups = int(round(math.log2(patch / 4)))
        if 2 ** ups * 4 != patch or ups > config.decoder_blocks:
            raise ValueError(f"patch size {patch} needs log2({patch}/4) upsampling blocks; have {config.decoder_blocks}")
        self.patch, self.kp_upsample = patch, float(2 ** ups)
        self.masker_block = copy.deepcopy(visual.transformer.resblocks[-1])
        self.masker_ln = copy.deepcopy(visual.ln_post)
        self.decoder = nn.ModuleList(GatedResConv(width, i < ups, config.double_conv)
                                     for i in range(config.decoder_blocks))
        self.image_proj = nn.Conv2d(width, self.embed_dim, 1, bias=False)
        with torch.no_grad():
            self.image_proj.weight.copy_(visual.proj.t()[:, :, None, None])
        for p in list(self.masker_block.parameters()) + list(self.masker_ln.parameters()):
            p.requires_grad_(True)
        self.w = nn.Parameter(torch.tensor(float(config.init_w)))
        self.b = nn.Parameter(torch.tensor(float(config.init_b)))
        scale = math.log(1 / config.temperature)
        self.image_logit_scale = nn.Parameter(torch.tensor(scale))
        self.feature_logit_scale = nn.Parameter(torch.tensor(scale))

    def train(self, mode: bool = True) -> "TCL":
        super().train(mode)
        self.clip.eval()  # the CLIP stays frozen (no dropout / norm statistics to update, but be explicit)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen CLIP (what a checkpoint stores)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    # ------------------------------------------------------------------------------------------ encoders
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images B x 3 x H x W -> (unit-norm grounding embeddings B x D x H/4 x W/4, unit-norm MaskCLIP dense
        embeddings B x D x H/p x W/p)."""
        ground, dense = self.encode_raw(images)
        return F.normalize(ground, dim=1), F.normalize(dense, dim=1)

    @torch.no_grad()
    def clip_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP: (tokens before its last block B x (1 + h w) x W, MaskCLIP dense B x D x h x w)."""
        visual = self.clip.visual
        last = len(visual.transformer.resblocks) - 1
        feats, taps = encode_image_features(visual, images, hooks=(last - 1,) if last else ())
        return (taps[0] if last else visual._embeds(images)), feats.dense

    def encode_raw(self, images: torch.Tensor,
                   tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`encode` but the grounding embeddings are not normalized (for the TV loss). ``tokens``:
        precomputed frozen CLIP tokens (:meth:`clip_tokens`); the dense output is then None."""
        visual = self.clip.visual
        dense = None
        if tokens is None:
            tokens, dense = self.clip_tokens(images)
        x = self.masker_ln(_value_path(self.masker_block, tokens)[:, 1:])
        gh, gw = visual.grid_size
        x = x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        for blk in self.decoder:
            x = blk(x)
        return self.image_proj(x), dense

    # ------------------------------------------------------------------------------------------ masks
    def mask_logits(self, ground: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ground B x D x h x w (unit norm), text C x D (unit norm) -> w cos + b, B x C x h x w."""
        return self.w * torch.einsum("bdhw,cd->bchw", ground, text) + self.b

    def head_terms(self, ground: torch.Tensor, dense: torch.Tensor,
                   text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inference terms, B x C x H/4 x W/4 each in [0, 1]: the TCL mask sigmoid(w cos + b) and the
        frozen MaskCLIP one sigmoid((cos - 0.25) 10), bilinearly upsampled from the patch grid (TCL's kp branch).
        The official inference refines the first with PAMR, then mixes (:meth:`head`)."""
        c = self.config
        mask = torch.sigmoid(self.mask_logits(ground, text))
        kp = torch.sigmoid((torch.einsum("bdhw,cd->bchw", dense, text) - c.kp_offset) * c.kp_scale)
        if self.kp_upsample != 1.0:
            kp = F.interpolate(kp, scale_factor=self.kp_upsample, mode="bilinear", align_corners=False)
        return mask, kp

    def head(self, ground: torch.Tensor, dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Inference masks B x C x H/4 x W/4 in [0, 1] without PAMR: the TCL mask mixed with the frozen
        MaskCLIP one (kp_weight kp + (1 - kp_weight) mask)."""
        mask, kp = self.head_terms(ground, dense, text)
        w = self.config.kp_weight
        return w * kp + (1.0 - w) * mask if w else mask

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """images B x 3 x H x W, text C x D (unit norm) -> inference masks B x C x H/4 x W/4."""
        return self.head(*self.encode(images), text)

    # ------------------------------------------------------------------------------------------ training
    def losses(self, images: torch.Tensor, text: torch.Tensor, targets: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Unweighted TCL losses of a batch: images B x 3 x H x W, text B x D (unit norm, text i is the caption
        of image i), targets B x B (targets[i, j] = text j is true of image i; default identity).
        ``tokens``: the frozen CLIP's tokens of ``images`` if precomputed (:meth:`clip_tokens`).
        Returns ``image_tcl``, ``feature_tcl``, ``area``, ``tv`` (see :data:`LOSS_WEIGHTS`)."""
        B = images.shape[0]
        targets = torch.eye(B) if targets is None else targets
        raw, _ = self.encode_raw(images, tokens)
        ground = F.normalize(raw, dim=1)
        logits = self.mask_logits(ground, text)  # B x B x h x w: image i, text j
        soft = torch.sigmoid(logits)
        idx = torch.arange(B)
        hard_pos = gumbel_sigmoid(logits[idx, idx], self.config.gumbel_tau, generator)  # B x h x w
        # image level: the frozen CLIP sees only the hard mask of image i's own text
        up = F.interpolate(hard_pos[:, None], size=images.shape[-2:], mode="nearest")
        masked = self.clip.encode_image(up * images)
        image_tcl = infonce(F.normalize(masked, dim=-1) @ text.t(), self.image_logit_scale, targets)
        # feature level: grounding embeddings pooled under the soft mask of every (image, text) pair
        weight = soft / (soft.sum((2, 3), keepdim=True) + 1e-6)
        region = F.normalize(torch.einsum("bdhw,bnhw->bnd", ground, weight), dim=-1)
        feature_tcl = infonce(torch.einsum("bnd,nd->bn", region, text), self.feature_logit_scale, targets)
        neg = (targets == 0)
        area = (soft[idx, idx].mean() - self.config.area_prior).abs()
        if neg.any():
            area = area + soft[neg].mean().abs()
        tv = tv_loss(soft) + tv_loss(ground)
        return {"image_tcl": image_tcl, "feature_tcl": feature_tcl, "area": area, "tv": tv}


def infonce(sim: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a B x B cosine matrix (rows images, columns texts) with multi-positive 0/1
    targets; each direction spreads its target evenly over its positives."""
    logits = logit_scale.exp().clamp(max=100) * sim
    t_img = targets / targets.sum(1, keepdim=True).clamp(min=1)
    t_txt = targets.t() / targets.t().sum(1, keepdim=True).clamp(min=1)
    return (-(t_img * logits.log_softmax(1)).sum(1).mean() - (t_txt * logits.t().log_softmax(1)).sum(1).mean()) / 2


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard {0, 1} sample of sigmoid(logits) with Gumbel noise; the gradient is the soft sample's
    (straight-through)."""
    u = torch.rand((2,) + logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    g = -torch.log(-torch.log(u))
    soft = torch.sigmoid((logits + g[0] - g[1]) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute difference of neighbours) of a ... x H x W tensor."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...], centre: bool) -> torch.Tensor:
    """x B x K x H x W -> B x K x P x H x W: the 8 neighbours (and the centre, once per dilation, when
    ``centre``) at each dilation, edges replicated."""
    H, W = x.shape[-2:]
    out = []
    for d in dilations:
        p = F.pad(x, (d, d, d, d), mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0 and not centre:
                    continue
                out.append(p[..., d + dy * d:d + dy * d + H, d + dx * d:d + dx * d + W])
    return torch.stack(out, dim=2)


@torch.no_grad()
def pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int = PAMR_ITERATIONS,
         dilations: tuple[int, ...] = PAMR_DILATIONS) -> torch.Tensor:
    """PAMR reference. image B x K x H x W (any normalization), mask B x C x H x W (same H, W).

    Affinity of pixel i to neighbour j (8 per dilation): -|x_i - x_j| / (1e-8 + 0.1 std_i), std_i the
    unbiased standard deviation of the 9 values per dilation around i (all dilations together), averaged
    over the K channels and softmax-normalised over the neighbours; then ``iterations`` times
    mask_i <- sum_j aff_ij mask_j."""
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in H, W")
    dil = tuple(int(d) for d in dilations)
    std = _neighbours(image, dil, centre=True).std(dim=2, keepdim=True)  # unbiased
    diff = (image[:, :, None] - _neighbours(image, dil, centre=False)).abs()
    aff = (-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True).softmax(dim=2)  # B x 1 x P x H x W
    for _ in range(iterations):
        mask = (_neighbours(mask, dil, centre=False) * aff).sum(2)
    return mask
