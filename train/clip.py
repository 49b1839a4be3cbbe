"""CLIP through open_clip: registered configs, dense (MaskCLIP) image features, weight loading.

Registry (architecture only; weights and preprocessing live in :data:`CLIP_WEIGHTS`):
- ``ViT-B-16``: full size, open_clip's own config (GELU). ``ViT-B-16-quickgelu``: the OpenAI variant.
- ``toy-tiny``: a small CLIP for ToyWorld (96 px, patch 8, 128-d embeddings), from ``configs/``.
- ``ViT-B-32-quickgelu``: OpenAI's ViT-B/32 (the text tower of lang-seg's LSeg); ``clip-tiny-official``: a tiny
  OpenAI-style CLIP (77 tokens, QuickGELU) for CI tests of the official LSeg / TCL layouts.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

CLIP_CONFIGS = {
    "ViT-B-16": {"open_clip": "ViT-B-16", "quick_gelu": False},
    "ViT-B-16-quickgelu": {"open_clip": "ViT-B-16", "quick_gelu": True},
    "toy-tiny": {"file": "clip-toy-tiny.json"},
    # OpenAI CLIPs of the official LSeg (ViT-B/32 text tower) and TCL (ViT-B/16) checkpoints, and tiny test twins
    "ViT-B-32-quickgelu": {"open_clip": "ViT-B-32", "quick_gelu": True},
    "clip-tiny-official": {"file": "clip-tiny-official.json"},
}
# Weights and preprocessing, separate from architecture (open_clip's pretrained table plays this role).
CLIP_WEIGHTS = {
    "ViT-B-16": {"source": "user file (open_clip checkpoint), or random init", "mean": OPENAI_MEAN, "std": OPENAI_STD},
    "ViT-B-16-quickgelu": {"source": "user file (OpenAI/open_clip checkpoint)", "mean": OPENAI_MEAN, "std": OPENAI_STD},
    "toy-tiny": {"source": "train/checkpoints/clip_toy", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
    "ViT-B-32-quickgelu": {"source": "inside a lang-seg checkpoint (clip_pretrained.*)", "mean": OPENAI_MEAN,
                           "std": OPENAI_STD},
    "clip-tiny-official": {"source": "random (tests of the official layouts)", "mean": OPENAI_MEAN, "std": OPENAI_STD},
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_clip`."""
    return sorted(CLIP_CONFIGS)


def clip_config(name: str) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg, quick_gelu) of a registered name."""
    if name not in CLIP_CONFIGS:
        raise ValueError(f"unknown CLIP config {name!r}; registered: {list_models()}")
    entry = CLIP_CONFIGS[name]
    if "file" in entry:
        return json.loads((CONFIG_DIR / entry["file"]).read_text())
    import open_clip

    cfg = dict(open_clip.get_model_config(entry["open_clip"]))
    cfg["quick_gelu"] = entry["quick_gelu"]
    return cfg


def registered_clip(spec: str | Path) -> tuple[str, str | None] | None:
    """``("ViT-B-16", "/path/weights.pt" or None)`` when ``spec`` names a registered config, optionally with
    ``:weights``; None when it is something else (a checkpoint folder)."""
    name, _, weights = str(spec).partition(":")
    return (name, weights or None) if name in CLIP_CONFIGS else None


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Random init inside is reproducible (export and verify rebuild the same weights) and leaves the global
    RNG state as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def create_clip(name: str, weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """Build an open_clip ``CLIP`` in eval mode.

    ``weights``: None (random init from ``seed``, reproducible), or a local open_clip checkpoint file (``.pt``/``.bin``/``.safetensors``,
    read with ``weights_only``), e.g. one downloaded by the user beforehand. Nothing is downloaded here.
    """
    import open_clip

    cfg = clip_config(name)
    with seeded(seed):
        model = open_clip.model.CLIP(**cfg)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights {str(path)!r} not found; give a local open_clip checkpoint file")
        from .checkpoint import safe_torch_load

        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - open_clip asserts on some shape mismatches; torch raises its own
            if path.suffix != ".safetensors":
                safe_torch_load(path, "open_clip")  # an unsafe or corrupt file: that one line, not a mismatch
            msg = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path} does not fit the {name!r} architecture ({msg}); "
                             f"pick the matching config from {list_models()}") from None
    return model.eval()


def clip_preprocessing(name: str, model: nn.Module) -> dict:
    """Preprocessing facts for a manifest: square resize to the tower's size, then mean/std."""
    size = model.visual.image_size
    size = list(size) if isinstance(size, (tuple, list)) else [size, size]
    w = CLIP_WEIGHTS[name]
    return {"image_size": size, "mean": list(w["mean"]), "std": list(w["std"]), "resize": "bilinear",
            "layout": "1x3xHxW float32 RGB, (x/255 - mean) / std"}


@dataclass
class ImageFeatures:
    pooled: torch.Tensor  # B x D  global embedding (unnormalized)
    dense: torch.Tensor  # B x D x h x w  MaskCLIP patch embeddings (unnormalized)


def _value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: attention replaced by its value path, v = out_proj(v_proj(ln_1(x))), then
    x + v and the block's MLP. x: B x N x C."""
    attn = block.attn
    c = x.shape[-1]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    v = attn.out_proj(v)
    y = x + block.ls_1(v)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def encode_image_features(visual: nn.Module, images: torch.Tensor,
                          hooks: tuple[int, ...] = ()) -> tuple[ImageFeatures, list[torch.Tensor]]:
    """Run an open_clip ``VisionTransformer`` once for global + dense embeddings.

    images: B x 3 x H x W float32, normalized. Returns the features and the token maps (B x N x C, class token
    first) after the blocks listed in ``hooks`` (0-based), for dense decoders such as DPT.
    """
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    taps: list[torch.Tensor] = []
    for i, blk in enumerate(blocks[:-1]):
        x = blk(x)
        if i in hooks:
            taps.append(x)
    last = blocks[-1]
    full = last(x)
    if len(blocks) - 1 in hooks:
        taps.append(full)
    pooled = visual._pool(full)[0] @ visual.proj  # open_clip's own pooling (class token or patch average)
    dense = visual.ln_post(_value_path(last, x)[:, 1:]) @ visual.proj
    gh, gw = visual.grid_size
    dense = dense.transpose(1, 2).reshape(dense.shape[0], -1, gh, gw)
    return ImageFeatures(pooled, dense), taps


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. ``targets``: B x B 0/1 matrix, targets[i, j] = text j is true of image i (several
    positives per row or column allowed; each direction spreads its target evenly over its positives)."""
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
    if targets is None:
        targets = torch.eye(len(logits), device=logits.device)
    t_img = targets / targets.sum(1, keepdim=True)
    t_txt = targets.t() / targets.t().sum(1, keepdim=True)
    loss_i = -(t_img * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(t_txt * logits.t().log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def load_clip(folder: str | Path) -> tuple[nn.Module, dict]:
    """Load a CLIP checkpoint folder written by ``edgeseg train clip`` (or a bundled name: ``clip_toy``)."""
    from .checkpoint import load_checkpoint

    state, config = load_checkpoint(folder, "clip")
    model = create_clip(config["architecture"]["name"])
    model.load_state_dict(state)
    return model.eval(), config


def frozen_clip_ref(checkpoint: str | Path, **extra) -> dict:
    """What a method checkpoint records of the frozen CLIP it was trained on (read by :func:`load_frozen_clip`):
    the CLIP checkpoint's folder name and weights sha256, plus ``extra`` (e.g. the text template)."""
    from edgeseg.runtime.fileio import sha256_file

    from .checkpoint import WEIGHTS, resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    return {"checkpoint": folder.name, "weights_sha256": sha256_file(folder / WEIGHTS), **extra, "frozen": True}


def load_frozen_clip(folder: Path, ref: dict, role: str = "CLIP checkpoint") -> nn.Module:
    """The CLIP a method checkpoint in ``folder`` was trained on. ``ref``: {"checkpoint": name or path (looked
    up next to ``folder`` first), "weights_sha256": ...}; a CLIP with other weights is refused."""
    name = ref["checkpoint"]
    path = folder.parent / name if (folder.parent / name).exists() else name
    clip, cfg = load_clip(path)
    if cfg.get("weights_sha256") != ref["weights_sha256"]:
        raise ValueError(f"{role} {path} is not the one {folder} was trained with (sha256 differs)")
    return clip
