"""IFSeg adapted to CLIP: a segmentation decoder trained from category words alone.

IFSeg (image-free segmentation) trains OFA's decoder on *artificial* feature maps built from category-word
embeddings instead of images. Here the backbone is a frozen CLIP whose MaskCLIP dense features live in the same
space as its text embeddings, so an artificial "image" is a grid of text embeddings:

1. draw ``C`` categories from the vocabulary (ToyWorld's 14 class words through the prompt template),
2. draw a ``U x V`` grid (``U, V`` uniform in ``1..S``) with a random category per cell,
3. nearest-upsample the cells' text embeddings to the feature grid ``h x w`` (the decoder's input) and the cell
   ids to the output resolution ``H x W`` (the target),
4. cross-entropy of the decoder's logits (bilinearly upsampled to ``H x W``) against the target.

No image is ever used in training. At test time the decoder consumes real dense CLIP image features.

Decoder (:class:`IFSegDecoder`): unit-norm features B x D x h x w and the C category embeddings C x D are
projected to a width W; ``layers`` blocks of joint self-attention over the h*w pixel tokens and the C category
tokens (as OFA's encoder-decoder sees the category tokens next to the image tokens), a depthwise 3x3 conv on the
pixel tokens (positional / local context), and an MLP. The pixel tokens are projected back to D and *added* to
the input features (the projection starts at zero, so an untrained decoder is exactly MaskCLIP); logits are
``exp(logit_scale) * cos(pixel, category)`` against the tied, frozen category embeddings, at the feature grid.
With ``layers = 0`` the decoder is the identity: the MaskCLIP-only baseline.

Modality gap (text vs image embeddings: image patches reach cosine ~0.64 to their class text, shape words are
~0.9 apart): three cheap tricks on the *artificial* inputs only, set in ``train_ifseg.IFSegRecipe``:
``noise`` (Gaussian noise of that norm relative to a unit text embedding, per feature pixel), ``offset`` (one
random shared vector per sample, about the size of the gap between the modalities' means, ~0.8 for clip_toy)
and ``mix`` (a fraction of each feature pixel replaced by a random other category of the sample, as patches
straddling two regions are); every artificial feature is then L2-normalized, like real ones. No centring: it
lowered MaskCLIP's own mIoU (generalized 0.462 -> 0.452, 100 scenes).

Also here: :func:`knn_refine`, the PyTorch reference of the runtime's kNN post-processing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class IFSegConfig:
    clip: str = "toy-tiny"  # CLIP config name (see clip.list_models())
    embed_dim: int = 128  # D of the CLIP joint space
    grid: tuple[int, int] = (12, 12)  # dense feature grid h x w of the CLIP tower
    width: int = 128  # decoder width W
    layers: int = 2  # decoder blocks (0: identity decoder = MaskCLIP baseline)
    heads: int = 4
    mlp_ratio: int = 2
    temperature: float = 0.07  # initial logit temperature (logit_scale is learnt)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "IFSegConfig":
        d = dict(d)
        d["grid"] = tuple(d["grid"])
        return cls(**d)


IFSEG_CONFIGS = {
    "toy-tiny": IFSegConfig(),
    "vit-b16": IFSegConfig(clip="ViT-B-16", embed_dim=512, grid=(14, 14), width=256, layers=2, heads=8),
}


class Attention(nn.Module):
    """Plain multi-head self-attention (reshapes with -1 only: the token count stays dynamic in ONNX)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.qkv, self.out = heads, nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x L x W -> B x L x W."""
        b, _, w = x.shape
        q, k, v = self.qkv(x).reshape(b, -1, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1)) * (w // self.heads) ** -0.5
        y = att.softmax(-1) @ v  # B x heads x L x d
        return self.out(y.transpose(1, 2).reshape(b, -1, w))


class DecoderBlock(nn.Module):
    """Joint attention over [pixel tokens; category tokens], depthwise 3x3 conv on the pixel tokens, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln2, self.conv = nn.LayerNorm(width), nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.ln3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, pix: torch.Tensor, cat: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """pix: B x N x W (N = h*w), cat: B x C x W."""
        n = pix.shape[1]
        x = torch.cat([pix, cat], dim=1)
        x = x + self.attn(self.ln1(x))
        pix, cat = x[:, :n], x[:, n:]
        b, _, w = pix.shape
        local = self.conv(self.ln2(pix).transpose(1, 2).reshape(b, w, grid[0], grid[1]))
        pix = pix + local.flatten(2).transpose(1, 2)
        x = torch.cat([pix, cat], dim=1)
        x = x + self.mlp(self.ln3(x))
        return x[:, :n], x[:, n:]


class IFSegDecoder(nn.Module):
    def __init__(self, config: IFSegConfig):
        super().__init__()
        self.config = config
        d, w = config.embed_dim, config.width
        self.pix_in, self.cat_in = nn.Linear(d, w), nn.Linear(d, w)
        self.blocks = nn.ModuleList(DecoderBlock(w, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.ln_out, self.pix_out = nn.LayerNorm(w), nn.Linear(w, d)
        nn.init.zeros_(self.pix_out.weight)  # untrained decoder = identity = MaskCLIP
        nn.init.zeros_(self.pix_out.bias)
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / config.temperature).log())

    def pixel_embeddings(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """feats B x D x h x w, text C x D (both normalized here) -> unit-norm pixel embeddings B x D x h x w."""
        feats, text = F.normalize(feats, dim=1), F.normalize(text, dim=-1)
        if not self.blocks:
            return feats
        b, d, h, w = feats.shape
        x = feats.flatten(2).transpose(1, 2)  # B x N x D
        pix = self.pix_in(x)
        cat = self.cat_in(text).unsqueeze(0).expand(b, -1, -1)
        for blk in self.blocks:
            pix, cat = blk(pix, cat, (h, w))
        out = x + self.pix_out(self.ln_out(pix))
        return F.normalize(out, dim=-1).transpose(1, 2).reshape(b, d, h, w)

    def forward(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """feats B x D x h x w, text C x D -> logits B x C x h x w (scaled cosine, at the feature grid)."""
        pix = self.pixel_embeddings(feats, text)
        scale = self.logit_scale.exp().clamp(max=100.0)
        return torch.einsum("bdhw,cd->bchw", pix, F.normalize(text, dim=-1)) * scale


def artificial_batch(vocab: torch.Tensor, batch: int, num_categories: int, max_cells: int, grid: tuple[int, int],
                     out_size: tuple[int, int], generator: torch.Generator, noise: float = 0.0,
                     offset: float = 0.0, mix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One IFSeg training batch from words alone.

    vocab: V x D unit-norm category embeddings. Returns ``(feats B x D x h x w unit norm, text C x D,
    target B x H x W int64 in [0, C))``: ``C = num_categories`` categories drawn without replacement (shared by
    the batch, as the decoder takes one label set), per sample a ``U x V`` grid (``U, V`` uniform in
    ``1..max_cells``) of random category ids, nearest-upsampled to ``grid`` (input) and ``out_size`` (target).
    ``noise``, ``offset`` and ``mix``: the modality-gap augmentations of the module docstring.
    """
    v, d = vocab.shape
    if not 1 <= num_categories <= v:
        raise ValueError(f"num_categories must be in 1..{v}, got {num_categories}")
    cats = torch.randperm(v, generator=generator)[:num_categories]
    text = vocab[cats]
    feats, targets = [], []
    for _ in range(batch):
        u, w = (int(x) for x in torch.randint(1, max_cells + 1, (2,), generator=generator))
        ids = torch.randint(0, num_categories, (1, 1, u, w), generator=generator).float()
        ids_in = F.interpolate(ids, size=grid, mode="nearest").long()[0, 0]  # h x w
        targets.append(F.interpolate(ids, size=out_size, mode="nearest").long()[0, 0])
        f = text[ids_in]  # h x w x D
        if mix > 0:
            other = text[torch.randint(0, num_categories, grid, generator=generator)]
            a = torch.rand(grid + (1,), generator=generator) * mix
            f = (1 - a) * f + a * other
        if noise > 0:
            f = f + noise * torch.randn(f.shape, generator=generator) / d ** 0.5
        if offset > 0:
            f = f + offset * torch.randn(d, generator=generator) / d ** 0.5
        feats.append(f.permute(2, 0, 1))
    return F.normalize(torch.stack(feats), dim=1), text, torch.stack(targets)


def ifseg_loss(decoder: IFSegDecoder, feats: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the decoder's logits, bilinearly upsampled to the target's H x W, against the target."""
    logits = decoder(feats, text)
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, target)


def knn_refine(probs: torch.Tensor, feats: torch.Tensor, k: int = 3, iterations: int = 25) -> torch.Tensor:
    """IFSeg's kNN post-processing (PyTorch reference of ``runtime/knn.py``).

    probs: B x C x h x w class probabilities; feats: B x D x h x w image features. For every position, its
    ``k`` nearest positions of the same image by cosine similarity (itself always first; ties broken by the
    lower index), then ``iterations`` times: probabilities <- mean of the neighbours' probabilities.
    """
    if k < 1 or iterations < 0:
        raise ValueError(f"k must be >= 1 and iterations >= 0; got k={k}, iterations={iterations}")
    b, c, h, w = probs.shape
    n = h * w
    f = F.normalize(feats.flatten(2).double(), dim=1)  # B x D x N
    sim = f.transpose(1, 2) @ f  # B x N x N
    sim = sim + torch.diag(torch.full((n,), float("inf"), dtype=sim.dtype))  # self first, whatever the ties
    idx = torch.sort(-sim, dim=-1, stable=True).indices[..., :min(k, n)]  # B x N x K
    p = probs.flatten(2).double()  # B x C x N
    for _ in range(iterations):
        p = torch.stack([p[i][:, idx[i]].mean(-1) for i in range(b)])
    return p.reshape(b, c, h, w).to(probs.dtype)
