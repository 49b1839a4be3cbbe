"""LSeg as lang-seg builds it (isl-org/lang-seg ``LSegNet``, ``modules/models/lseg_*.py``), written from that code
with the same module tree, so its state dict has the official keys (a Lightning checkpoint's ``state_dict``
without the ``net.`` prefix: 730 keys for ``lseg_vitl16_384``).

Architecture (configs in ``train/configs/lseg-*.json``, :data:`LSEG_OFFICIAL_CONFIGS`):
- ``pretrained.model``: a timm ViT (``vit_large_patch16_384`` / ``vit_base_patch32_384``) run as lang-seg's
  ``forward_flex``: patch conv, class token, position embedding resized bilinearly (align_corners=False) from
  its 24 x 24 (12 x 12) grid to the input's, the blocks; the outputs of the ``hooks`` blocks are tapped.
- ``pretrained.act_postprocess1..4``: readout "project" (Linear(2W, W) + GELU on [patch, class] tokens),
  transpose, unflatten (slot 2, skipped: done for the input's grid), 1x1 conv to 256/512/1024/1024 (ViT-B/32:
  96/192/384/768), then per tap ConvTranspose k=s=4, 2, none, Conv 3x3 stride 2 (ViT-B/32: 8, 4, 2, none).
- ``scratch.layer1..4_rn``: 3x3 convs (no bias) to ``features``; ``scratch.refinenet4..1``: fusion blocks
  (x + RCU1(skip), RCU2, bilinear x2 align_corners=True, 1x1 out conv); each RCU is
  ReLU-conv(no bias)-BN-ReLU-conv-BN + x (BatchNorm in eval: running statistics).
- ``scratch.head1``: 1x1 conv to the CLIP width (512); unit-norm pixel features at stride 2.
- ``clip_pretrained``: OpenAI CLIP ViT-B/32 (QuickGELU; open_clip's module tree has OpenAI's keys); only its text
  tower runs (``encode_text`` of the raw labels, no template), unit norm.
- logits = (1 / 0.07) <pixel, text> (lang-seg multiplies in half precision on the GPU; FP32 here), then
  ``arch_option`` 1 (bottleneck: depthwise 3x3 + channel max) or 2 (depthwise) applies one shared
  ``scratch.head_block`` ``block_depth`` - 1 times with ``activation`` (lrelu: LeakyReLU(0.01), tanh) and once
  without, then ``scratch.output_conv``: bilinear x2 with align_corners=True.

Shapes: images B x 3 x H x W (normalized with mean = std = 0.5) -> pixel embeddings B x 512 x H/2 x W/2 ->
logits B x C x H x W for text embeddings C x 512.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .vit_pos import FixedPosEmbed

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LSEG_OFFICIAL_CONFIGS = {"lseg_vitl16_384": "lseg-vitl16-384.json", "lseg_vitb32_384": "lseg-vitb32-384.json",
                         "lseg_tiny_official": "lseg-tiny-official.json"}
WHAT = "lang-seg LSeg"


@dataclass
class LSegOfficialConfig:
    timm_model: str  # timm.create_model name (lang-seg: vit_large_patch16_384 / vit_base_patch32_384)
    hooks: tuple[int, ...]  # blocks tapped (lang-seg: [5, 11, 17, 23] / [2, 5, 8, 11])
    reassemble: tuple[int, ...]  # act_postprocess channels
    resample: tuple[float, ...]  # per tap: ConvTranspose k=s=f (f > 1), none (1), Conv 3x3 stride 2 (0.5)
    text_clip: str  # edgeseg.train.clip config of the CLIP whose text tower embeds the labels
    timm_kwargs: dict = field(default_factory=dict)  # overrides of the timm config (the tiny test config)
    features: int = 256
    arch_option: int = 0  # 0: no head block; 1: bottleneck_block; 2: depthwise_block (lang-seg --arch_option)
    block_depth: int = 0
    activation: str = "lrelu"  # lrelu | tanh (lang-seg --activation)
    crop_size: int = 480  # the encoder input exported (lang-seg's crop_size)
    base_size: int = 520  # the evaluation's long side (MultiEvalModule base_size)
    stride_rate: float = 2.0 / 3.0  # window stride = int(crop_size * stride_rate)
    logit_scale: float = 1.0 / 0.07

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("hooks", "reassemble", "resample"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LSegOfficialConfig":
        d = dict(d)
        for k in ("hooks", "reassemble", "resample"):
            d[k] = tuple(d[k])
        return cls(**d)


def official_config(name: str) -> LSegOfficialConfig:
    """The registered config ``name`` (:data:`LSEG_OFFICIAL_CONFIGS`)."""
    if name not in LSEG_OFFICIAL_CONFIGS:
        raise ValueError(f"unknown lang-seg config {name!r}; registered: {sorted(LSEG_OFFICIAL_CONFIGS)}")
    return LSegOfficialConfig.from_dict(json.loads((CONFIG_DIR / LSEG_OFFICIAL_CONFIGS[name]).read_text()))


class ProjectReadout(nn.Module):
    """[patch tokens, class token] -> Linear(2W, W) -> GELU (lang-seg readout "project")."""

    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        readout = x[:, 0].unsqueeze(1).expand_as(x[:, 1:])
        return self.project(torch.cat((x[:, 1:], readout), -1))


def _postprocess(width: int, channels: int, factor: float) -> nn.Sequential:
    """act_postprocess: slots 0 readout, 1 transpose, 2 unflatten (both parameter-free, applied in
    :meth:`LSegOfficial.encode`), 3 the 1x1 conv, 4 the resampling (absent for factor 1)."""
    mods: list[nn.Module] = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, channels, 1)]
    if factor > 1:
        mods.append(nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor)))
    elif factor < 1:
        mods.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
    return nn.Sequential(*mods)


class ResidualConvUnit(nn.Module):
    """lang-seg ResidualConvUnit_custom with bn=True: x + BN(conv(ReLU(BN(conv(ReLU(x))))))."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        return self.bn2(self.conv2(F.relu(out))) + x


class FusionBlock(nn.Module):
    """lang-seg FeatureFusionBlock_custom: out_conv(up2_ac(RCU2(x + RCU1(skip))))."""

    def __init__(self, c: int):
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(c), ResidualConvUnit(c)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DepthwiseConv(nn.Module):
    """One 3x3 filter shared by every label: B x C x H x W -> B x C x H x W."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(1, 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, H, W = x.shape[1:]
        return self.depthwise(x.reshape(-1, 1, H, W)).view(-1, C, H, W)


class HeadBlock(nn.Module):
    """lang-seg bottleneck_block (``bottleneck``: + max over labels) / depthwise_block, then the activation."""

    def __init__(self, bottleneck: bool, activation: str):
        super().__init__()
        if activation not in ("lrelu", "tanh"):
            raise ValueError(f"lang-seg head activation must be 'lrelu' or 'tanh', got {activation!r}")
        self.bottleneck, self.depthwise = bottleneck, DepthwiseConv()
        self.activation = nn.LeakyReLU() if activation == "lrelu" else nn.Tanh()

    def forward(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        y = self.depthwise(x)
        if self.bottleneck:
            y = y + x.max(dim=1, keepdim=True)[0]
        return self.activation(y) if act else y


def _text_clip(name: str) -> nn.Module:
    import open_clip

    from .clip import clip_config

    return open_clip.model.CLIP(**clip_config(name)).eval()


class LSegOfficial(FixedPosEmbed):
    """LSegNet's module tree: ``clip_pretrained``, ``pretrained`` (``model`` + ``act_postprocess1..4``),
    ``scratch``. :meth:`encode` / :meth:`head_logits` are the two exported halves; ``forward`` is LSegNet's.
    ``fix_input_size`` / ``_pos_embed``: :class:`edgeseg.train.vit_pos.FixedPosEmbed`."""

    def __init__(self, config: LSegOfficialConfig):
        super().__init__()
        import timm

        self.config = c = config
        self.clip_pretrained = _text_clip(c.text_clip)
        self.pretrained = nn.Module()
        self.pretrained.model = timm.create_model(c.timm_model, pretrained=False, **c.timm_kwargs)
        vit = self.pretrained.model
        width, patch = vit.embed_dim, vit.patch_embed.patch_size[0]
        self.patch = patch
        for i, (ch, f) in enumerate(zip(c.reassemble, c.resample), start=1):
            setattr(self.pretrained, f"act_postprocess{i}", _postprocess(width, ch, f))
        self.scratch = nn.Module()
        for i, ch in enumerate(c.reassemble, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, c.features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(c.features))
        self.embed_dim = int(self.clip_pretrained.text_projection.shape[1])
        self.scratch.head1 = nn.Conv2d(c.features, self.embed_dim, kernel_size=1)
        if c.arch_option in (1, 2):
            self.scratch.head_block = HeadBlock(c.arch_option == 1, c.activation)
        elif c.arch_option != 0:
            raise ValueError(f"lang-seg arch_option must be 0, 1 or 2, got {c.arch_option}")
        # lang-seg: nn.Parameter(ones * log(1 / 0.07)).exp() is a plain tensor, not in the state dict
        self.register_buffer("logit_scale", torch.tensor(math.log(c.logit_scale), dtype=torch.float32).exp(),
                             persistent=False)

    def _resize_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """lang-seg ``_resize_pos_embed``: 1 x (1 + n) x W -> 1 x (1 + gh gw) x W, the grid part resized
        bilinearly (align_corners=False), class token kept."""
        pe = self.pretrained.model.pos_embed
        tok, grid = pe[:, :1], pe[0, 1:]
        old = int(math.sqrt(len(grid)))
        grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """lang-seg ``forward_flex`` up to the last hook: the outputs of the hooked blocks (B x 1+N x W)."""
        vit = self.pretrained.model
        gh, gw = images.shape[2] // self.patch, images.shape[3] // self.patch
        x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = vit.pos_drop(x + self._pos_embed(gh, gw))
        taps = []
        for i, blk in enumerate(vit.blocks[:max(self.config.hooks) + 1]):
            x = blk(x)
            if i in self.config.hooks:
                taps.append(x)
        return taps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images B x 3 x H x W (H, W multiples of 32) -> unit-norm pixel embeddings B x D x H/2 x W/2."""
        gh, gw = images.shape[2] // self.patch, images.shape[3] // self.patch
        layers = []
        for i, t in enumerate(self._taps(images), start=1):
            post = getattr(self.pretrained, f"act_postprocess{i}")
            x = post[0](t).transpose(1, 2)
            x = x.reshape(x.shape[0], x.shape[1], gh, gw)
            layers.append(getattr(self.scratch, f"layer{i}_rn")(post[3:](x)))
        s = self.scratch
        path = s.refinenet4(layers[3])
        path = s.refinenet3(path, layers[2])
        path = s.refinenet2(path, layers[1])
        path = s.refinenet1(path, layers[0])
        return F.normalize(s.head1(path), dim=1)

    def head_logits(self, pixel: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """pixel B x D x h x w, text C x D (both unit norm) -> logits B x C x 2h x 2w."""
        out = self.logit_scale * torch.einsum("bdhw,cd->bchw", pixel, text)
        if self.config.arch_option in (1, 2):
            for _ in range(self.config.block_depth - 1):
                out = self.scratch.head_block(out)
            out = self.scratch.head_block(out, False)
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP token ids N x 77 -> unit-norm text embeddings N x D."""
        return F.normalize(self.clip_pretrained.encode_text(tokens), dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """images B x 3 x H x W, text C x D (unit norm) -> logits B x C x H x W."""
        return self.head_logits(self.encode(images), text)


def official_lseg_spec(checkpoint: str | Path) -> tuple[str, str | None] | None:
    """``("lseg_vitl16_384", "/path/demo_e200.ckpt" or None)`` when ``checkpoint`` names a registered lang-seg
    config, optionally with ``:weights``; None otherwise (an edgeseg LSeg checkpoint folder)."""
    name, _, weights = str(checkpoint).partition(":")
    return (name, weights or None) if name in LSEG_OFFICIAL_CONFIGS else None


def load_official_lseg(name: str, weights: str | Path | None = None, seed: int = 0) -> LSegOfficial:
    """The lang-seg model of config ``name`` in eval mode: random (seeded: export and verify rebuild the same
    weights) or read from ``weights``, a lang-seg checkpoint (Lightning ``.ckpt`` with ``net.``-prefixed
    ``state_dict``, or a plain state dict), refused unless its keys and shapes are exactly the config's."""
    from .clip import seeded
    from .official_weights import load_exact, read_state_dict

    with seeded(seed):
        model = LSegOfficial(official_config(name))
    if weights is not None:
        state = read_state_dict(weights, WHAT, ("state_dict",), ("net.", "module."))
        load_exact(model, state, weights, f"{WHAT} {name!r}")
    return model.eval()
