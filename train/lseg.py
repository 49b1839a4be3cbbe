"""LSeg: a CLIP image tower + DPT decoder producing pixel embeddings matched to frozen CLIP text embeddings.

Shapes: images B x 3 x H x W (normalized); pixel embeddings B x D x H/2 x W/2 (unit norm); text embeddings
C x D (unit norm); logits B x C x H x W = upsample2x(spatial_reg(cos(pixel, text) / T)).

The decoder follows DPT: four token maps from chosen blocks are reassembled to strides 4, 8, 16 and 32 px
(readout "project"), projected to one width, fused coarse to fine by residual fusion blocks with x2
upsampling, and a 1x1 head maps the stride-2 result into the CLIP embedding space. Optional label-equivariant
spatial-regularization blocks (LSeg's depthwise / bottleneck) act on the logits, one shared 3x3 filter for
every label, so they work for any number of labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .clip import clip_config, create_clip, encode_image_features


@dataclass
class LSegConfig:
    clip: str = "toy-tiny"  # CLIP config name (see clip.list_models())
    hooks: tuple[int, ...] = (1, 2, 3, 4)  # transformer blocks tapped by the decoder (0-based)
    reassemble: tuple[int, ...] = (32, 64, 128, 128)  # channels per reassembled map
    features: int = 64  # fusion width
    temperature: float = 0.07
    spatial_blocks: int = 0  # number of spatial-regularization blocks on the logits (paper best: 2)
    block_type: str = "bottleneck"  # bottleneck | depthwise
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hooks"], d["reassemble"] = list(self.hooks), list(self.reassemble)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LSegConfig":
        d = dict(d)
        d["hooks"], d["reassemble"] = tuple(d["hooks"]), tuple(d["reassemble"])
        return cls(**d)


LSEG_CONFIGS = {
    "toy-tiny": LSegConfig(),
    "vit-b16": LSegConfig(clip="ViT-B-16", hooks=(2, 5, 8, 11), reassemble=(96, 192, 384, 768), features=256),
}


class ResidualConvUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """out = conv1x1(up2(rcu2(x + rcu1(skip))))."""

    def __init__(self, c: int):
        super().__init__()
        self.rcu1, self.rcu2, self.out = ResidualConvUnit(c), ResidualConvUnit(c), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.rcu1(skip)
        x = self.rcu2(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.out(x)


class Reassemble(nn.Module):
    """Tokens (B x 1+N x W) -> map at ``patch/scale`` stride with readout projection."""

    def __init__(self, width: int, channels: int, scale: float):
        super().__init__()
        self.readout = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())
        self.proj = nn.Conv2d(width, channels, 1)
        if scale > 1:
            s = int(scale)
            self.resample: nn.Module = nn.ConvTranspose2d(channels, channels, s, stride=s)
        elif scale == 1:
            self.resample = nn.Identity()
        else:
            self.resample = nn.Conv2d(channels, channels, 3, stride=int(round(1 / scale)), padding=1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        x = self.readout(torch.cat([patches, cls.expand_as(patches)], dim=-1))
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])
        return self.resample(self.proj(x))


class SpatialBlock(nn.Module):
    """Label-equivariant 3x3 filter shared by all labels (LSeg depthwise / bottleneck block)."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("bottleneck", "depthwise"):
            raise ValueError(f"unknown spatial block {kind!r}; use 'bottleneck' or 'depthwise'")
        self.kind, self.conv = kind, nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, act: bool = True) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.conv(x.reshape(b * c, 1, h, w)).reshape(b, c, h, w)
        if self.kind == "bottleneck":
            y = y + x.max(dim=1, keepdim=True)[0]
        return F.relu(y) if act else y


class LSeg(nn.Module):
    def __init__(self, config: LSegConfig, clip_weights: str | None = None):
        super().__init__()
        self.config = config
        clip = create_clip(config.clip, clip_weights)
        self.visual = clip.visual
        self.embed_dim = clip_config(config.clip)["embed_dim"]
        width = self.visual.transformer.width
        patch = self.visual.patch_size[0] if isinstance(self.visual.patch_size, tuple) else self.visual.patch_size
        scales = [patch / s for s in (4, 8, 16, 32)]
        self.reassemble = nn.ModuleList(Reassemble(width, c, s) for c, s in zip(config.reassemble, scales))
        self.layer_rn = nn.ModuleList(nn.Conv2d(c, config.features, 3, padding=1, bias=False)
                                      for c in config.reassemble)
        self.fusion = nn.ModuleList(FusionBlock(config.features) for _ in range(4))
        self.head = nn.Conv2d(config.features, self.embed_dim, 1)
        self.blocks = nn.ModuleList(SpatialBlock(config.block_type) for _ in range(config.spatial_blocks))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images B x 3 x H x W -> unit-norm pixel embeddings B x D x H/2 x W/2."""
        _, taps = encode_image_features(self.visual, images, tuple(self.config.hooks))
        grid = tuple(self.visual.grid_size)
        maps = [rn(ra(t, grid)) for t, ra, rn in zip(taps, self.reassemble, self.layer_rn)]
        x = self.fusion[3](maps[3])
        x = self.fusion[2](x, maps[2])
        x = self.fusion[1](x, maps[1])
        x = self.fusion[0](x, maps[0])
        return F.normalize(self.head(x), dim=1)

    def head_logits(self, pixel: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """pixel B x D x h x w (unit norm), text C x D (unit norm) -> logits B x C x 2h x 2w."""
        logits = torch.einsum("bdhw,cd->bchw", pixel, text) / self.config.temperature
        for i, blk in enumerate(self.blocks):
            logits = blk(logits, act=i < len(self.blocks) - 1)
        return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.encode(images), text)
