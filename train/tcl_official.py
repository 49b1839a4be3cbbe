"""TCL as kakaobrain/tcl builds it (``models/tcl/{tcl,masker,encoders,decoders,modules}.py``, ``sclip``), written
from that code with the same module tree, so its state dict has the released checkpoint's keys (``tcl.pth``:
``{"model": state_dict, ...}``; 340 keys for ViT-B/16 with the frozen CLIP, 191 without it).

Architecture (``configs/tcl.yml``: ViT-B/16, ie_freeze 11, ie_ignore_last_attn, GDecoder double LN GELU, 2
layers; :data:`TCL_OFFICIAL_CONFIGS`):
- ``clip_image_encoder.clip_visual``: OpenAI CLIP ViT-B/16 (QuickGELU) with its ``ln_post`` / ``proj`` moved to
  ``clip_image_encoder.clip_proj`` (``ln``, ``proj``). Its position embedding (14 x 14 + class) is resized
  bicubically (align_corners=False) to the input's grid as sclip's ``interpolate_pos_emb``; the last block runs
  MaskCLIP's way (attention masked to the diagonal = its value path). Outputs: the tokens after block 10 (the
  masker's input) and the dense MaskCLIP embeddings clip_proj(last tokens) B x 512 x H/16 x W/16.
- ``masker.image_encoder.backbone``: a trained copy of the last block (value path), no LN / projection;
  ``masker.image_encoder.decoder.decoder.net.0..1``: ResConv blocks (nearest x2, x + tanh(g1) conv(GELU(LN(x))),
  x + tanh(g2) conv2(GELU(LN2(x)))), then ``...decoder.image_proj``: LN + projection -> grounding embeddings
  B x 512 x H/4 x W/4; ``masker.sim2mask``: mask = sigmoid(w cos + b).
- ``clip_text_encoder``: the CLIP text tower (its ``visual`` and ``logit_scale`` deleted, as TCL does).
- ``tcli_loss`` / ``tclf_loss``: the learnt InfoNCE temperatures (unused at inference, kept for the layout).

Inference (:meth:`TCLOfficial.head_terms` + the runtime, ``generate_masks`` with apply_pamr and kp_w = 0.3):
TCL mask at H/4 -> PAMR (10 iterations, dilations 1, 2, 4, 8, 12, 24) with the image bilinearly resized to it
(align_corners=True) -> 0.3 sigmoid((cos_maskclip - 0.25) 10) (bilinear to H/4) + 0.7 mask -> bilinear to H x W;
background 0.4 with PAMR. Shapes: images B x 3 x H x W (ImageNet mean/std, mmseg's Normalize), H, W multiples
of 16.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .clip import _value_path, clip_config
from .vit_pos import FixedPosEmbed

TCL_OFFICIAL_CONFIGS = {  # name -> (CLIP config, window = exported input size)
    "tcl_vitb16": {"clip": "ViT-B-16-quickgelu", "window": 448, "freeze": 11, "decoder_layers": 2},
    "tcl_tiny_official": {"clip": "clip-tiny-official", "window": 64, "freeze": 2, "decoder_layers": 2},
}
WHAT = "TCL"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # mmseg img_norm_cfg / 255


class LayerNorm2d(nn.LayerNorm):
    """LN over the channels of B x C x H x W (TCL's modules.LayerNorm2d, eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate) * x


class ConvBlock(nn.Module):
    """Pre-activation: gate(conv(GELU(LN(x))))."""

    def __init__(self, c: int):
        super().__init__()
        self.norm, self.activ = LayerNorm2d(c), nn.GELU()
        self.conv, self.gate = nn.Conv2d(c, c, 3, 1, 1), Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(self.activ(self.norm(x))))


class ResConv(nn.Module):
    """nearest x2, then x + conv(x), x + conv2(x) (TCL ResConv with upsample, double, gate)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.conv2 = ConvBlock(c), ConvBlock(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = x + self.conv(x)
        return x + self.conv2(x)


class GDecoder(nn.Module):
    """``net``: ``layers`` ResConv blocks, each upsampling x2."""

    def __init__(self, c: int, layers: int):
        super().__init__()
        self.net = nn.Sequential(*[ResConv(c) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LNProj(nn.Module):
    """LN then x @ proj over the channels of B x C x H x W or B x L x C (TCL LNProjLayer)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return (self.ln(x.permute(0, 2, 3, 1)) @ self.proj).permute(0, 3, 1, 2)
        return self.ln(x) @ self.proj


def _holder(**modules: nn.Module) -> nn.Module:
    m = nn.Module()
    for k, v in modules.items():
        setattr(m, k, v)
    return m


class TCLOfficial(FixedPosEmbed):
    """TCL's module tree (see the module docstring); :meth:`encode` and :meth:`head_terms` are the exported
    halves, with the same signatures as :class:`edgeseg.train.tcl.TCL` so the ``tcl_encoder`` / ``tcl_head``
    export wrappers serve both. ``fix_input_size`` / ``_pos_embed``: :class:`edgeseg.train.vit_pos.FixedPosEmbed`."""

    def __init__(self, name: str):
        super().__init__()
        import open_clip

        if name not in TCL_OFFICIAL_CONFIGS:
            raise ValueError(f"unknown TCL config {name!r}; registered: {sorted(TCL_OFFICIAL_CONFIGS)}")
        self.name, cfg = name, TCL_OFFICIAL_CONFIGS[name]
        self.freeze, self.window = cfg["freeze"], cfg["window"]
        ccfg = clip_config(cfg["clip"])
        clip = open_clip.model.CLIP(**ccfg)
        visual = clip.visual
        width, self.embed_dim = visual.transformer.width, ccfg["embed_dim"]
        self.patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size
        clip_proj = LNProj(width, self.embed_dim)
        visual.ln_post, visual.proj = nn.Identity(), None
        self.clip_image_encoder = _holder(clip_visual=visual, clip_proj=clip_proj)
        del clip.visual, clip.logit_scale
        self.clip_text_encoder = clip
        backbone = _holder(transformer=_holder(resblocks=nn.ModuleList(
            [copy.deepcopy(b) for b in visual.transformer.resblocks[self.freeze:]])))
        decoder = nn.Sequential()
        decoder.add_module("decoder", GDecoder(width, cfg["decoder_layers"]))
        decoder.add_module("image_proj", copy.deepcopy(clip_proj))
        sim2mask = _holder()
        sim2mask.w, sim2mask.b = nn.Parameter(torch.tensor(10.0)), nn.Parameter(torch.tensor(-2.5))
        self.masker = _holder(image_encoder=_holder(backbone=backbone, decoder=decoder), sim2mask=sim2mask)
        scale = math.log(1 / 0.07)
        self.tcli_loss = _holder()
        self.tcli_loss.logit_scale = nn.Parameter(torch.tensor(scale))
        self.tclf_loss = _holder()
        self.tclf_loss.logit_scale = nn.Parameter(torch.tensor(scale))
        self.kp_weight, self.kp_offset, self.kp_scale = 0.3, 0.25, 10.0

    @property
    def w(self) -> torch.Tensor:
        return self.masker.sim2mask.w

    @property
    def b(self) -> torch.Tensor:
        return self.masker.sim2mask.b

    def _resize_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """sclip ``interpolate_pos_emb``: (1 + n) x W -> (1 + gh gw) x W, bicubic, align_corners=False."""
        pe = self.clip_image_encoder.clip_visual.positional_embedding
        n = pe.shape[0] - 1
        if gh * gw == n and gh == gw:
            return pe
        size = int(n ** 0.5)
        grid = pe[1:].reshape(size, size, -1).permute(2, 0, 1)[None]
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)[0]
        return torch.cat([pe[:1], grid.permute(1, 2, 0).reshape(gh * gw, -1)])

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images B x 3 x H x W -> (unit-norm grounding embeddings B x D x H/4 x W/4, unit-norm MaskCLIP dense
        embeddings B x D x H/p x W/p)."""
        visual = self.clip_image_encoder.clip_visual
        B, gh, gw = images.shape[0], images.shape[2] // self.patch, images.shape[3] // self.patch
        x = visual.conv1(images).reshape(B, visual.conv1.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(B, 1, x.shape[-1], dtype=x.dtype), x], 1)
        x = visual.ln_pre(x + self._pos_embed(gh, gw))
        blocks = visual.transformer.resblocks
        for blk in blocks[:self.freeze]:
            x = blk(x)
        feat = x  # the masker's input (TCL: the output of block ie_freeze - 1)
        for blk in blocks[self.freeze:-1]:
            x = blk(x)
        dense = self.clip_image_encoder.clip_proj(_value_path(blocks[-1], x)[:, 1:])
        dense = dense.transpose(1, 2).reshape(B, -1, gh, gw)
        y = feat
        mblocks = self.masker.image_encoder.backbone.transformer.resblocks
        for i, blk in enumerate(mblocks):
            y = _value_path(blk, y) if i == len(mblocks) - 1 else blk(y)
        y = y[:, 1:].transpose(1, 2).reshape(B, -1, gh, gw)
        ground = self.masker.image_encoder.decoder(y)
        return F.normalize(ground, dim=1), F.normalize(dense, dim=1)

    def head_terms(self, ground: torch.Tensor, dense: torch.Tensor,
                   text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(TCL mask sigmoid(w cos + b), MaskCLIP term sigmoid((cos - 0.25) 10) bilinear to the mask's size),
        each B x C x H/4 x W/4, for unit-norm inputs and text C x D."""
        mask = torch.sigmoid(torch.einsum("bchw,nc->bnhw", ground, text) * self.w + self.b)
        kp = torch.sigmoid((torch.einsum("bchw,nc->bnhw", dense, text) - self.kp_offset) * self.kp_scale)
        kp = F.interpolate(kp, size=mask.shape[2:], mode="bilinear", align_corners=False)
        return mask, kp

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip_text_encoder.encode_text(tokens), dim=-1)


def official_tcl_spec(checkpoint: str | Path) -> tuple[str, str | None, str | None] | None:
    """``("tcl_vitb16", "/path/tcl.pth" or None, "/path/clip.pt" or None)`` for ``tcl_vitb16[:TCL[,CLIP]]``;
    None when ``checkpoint`` names no registered TCL config."""
    name, _, rest = str(checkpoint).partition(":")
    if name not in TCL_OFFICIAL_CONFIGS:
        return None
    tcl, _, clip = rest.partition(",")
    return name, tcl or None, clip or None


def clip_to_tcl_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenAI / open_clip CLIP state dict -> TCL's keys for its frozen encoders (``visual.ln_post`` and
    ``visual.proj`` go to ``clip_image_encoder.clip_proj``; ``logit_scale`` is dropped as TCL deletes it)."""
    out = {}
    for k, v in state.items():
        if k in ("visual.ln_post.weight", "visual.ln_post.bias"):
            out["clip_image_encoder.clip_proj.ln." + k.rsplit(".", 1)[1]] = v
        elif k == "visual.proj":
            out["clip_image_encoder.clip_proj.proj"] = v
        elif k.startswith("visual."):
            out["clip_image_encoder.clip_visual." + k[len("visual."):]] = v
        elif k != "logit_scale":
            out["clip_text_encoder." + k] = v
    return out


def load_official_tcl(name: str, weights: str | Path | None = None, clip_weights: str | Path | None = None,
                      seed: int = 0) -> TCLOfficial:
    """The TCL model of config ``name`` in eval mode: random (seeded) or read from ``weights``, TCL's released
    checkpoint (``{"model": state_dict}`` or a plain state dict). A file without the frozen CLIP encoders needs
    ``clip_weights`` (an OpenAI / open_clip ViT-B/16 state dict). Refused unless the keys and shapes are exactly
    the architecture's."""
    from .clip import seeded
    from .official_weights import load_exact, read_state_dict

    with seeded(seed):
        model = TCLOfficial(name)
    if weights is None:
        return model.eval()
    state = read_state_dict(weights, WHAT, ("model", "state_dict"), ("module.",))
    has_clip = any(k.startswith(("clip_image_encoder.", "clip_text_encoder.")) for k in state)
    if not has_clip:
        if clip_weights is None:
            raise ValueError(f"{weights} holds TCL without its frozen CLIP (no clip_image_encoder.* keys); give the "
                             f"OpenAI ViT-B/16 weights too: {name}:{weights},/path/to/ViT-B-16.pt (a state dict)")
        clip_state = read_state_dict(clip_weights, "CLIP ViT-B/16", ("state_dict", "model"), ("module.",))
        state = {**clip_to_tcl_keys(clip_state), **state}
    elif clip_weights is not None:
        raise ValueError(f"{weights} already holds TCL's frozen CLIP; drop the second path ({clip_weights})")
    load_exact(model, state, weights, f"{WHAT} {name!r}")
    return model.eval()
