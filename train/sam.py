"""Segment Anything (SAM) models for Ref-Diff mask proposals: configs, builders and loaders.

Built from the ``segment_anything`` package classes (ImageEncoderViT, PromptEncoder, MaskDecoder,
TwoWayTransformer, Sam). Three configs:

* ``vit_b`` / ``vit_h``: the published architectures (1024 x 1024 input, 64 x 64 embedding grid), random
  (seeded) weights, or the official weights with ``"vit_h:/path/sam_vit_h_4b8939.pth"``.
* ``toy-tiny``: 128 x 128 input (ToyWorld 96 px resized longest side -> 128), patch 8 -> 16 x 16 grid,
  64-wide prompt/decoder; trained on ToyWorld by :mod:`edgeseg.train.train_sam` (bundled ``sam_toy``).

The image preprocessing (longest side resize, pixel mean/std, bottom-right zero padding) is a separate table,
:data:`SAM_PREPROCESSING`; the numpy runtime reads it from the bundle manifest.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAM_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11], "img_size": 1024, "patch_size": 16, "window_size": 14,
              "prompt_embed_dim": 256, "mask_in_chans": 16, "decoder_depth": 2, "decoder_mlp_dim": 2048,
              "decoder_num_heads": 8, "iou_head_depth": 3, "iou_head_hidden_dim": 256, "num_multimask_outputs": 3},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31], "img_size": 1024, "patch_size": 16, "window_size": 14,
              "prompt_embed_dim": 256, "mask_in_chans": 16, "decoder_depth": 2, "decoder_mlp_dim": 2048,
              "decoder_num_heads": 8, "iou_head_depth": 3, "iou_head_hidden_dim": 256, "num_multimask_outputs": 3},
    "toy-tiny": {"encoder_embed_dim": 96, "encoder_depth": 4, "encoder_num_heads": 4,
                 "encoder_global_attn_indexes": [1, 3], "img_size": 128, "patch_size": 8, "window_size": 8,
                 "prompt_embed_dim": 64, "mask_in_chans": 16, "decoder_depth": 2, "decoder_mlp_dim": 256,
                 "decoder_num_heads": 4, "iou_head_depth": 3, "iou_head_hidden_dim": 64, "num_multimask_outputs": 3},
}
_IMAGENET_MEAN, _IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # 0-255 RGB
SAM_PREPROCESSING: dict[str, dict[str, Any]] = {
    "vit_b": {"img_size": 1024, "pixel_mean": _IMAGENET_MEAN, "pixel_std": _IMAGENET_STD},
    "vit_h": {"img_size": 1024, "pixel_mean": _IMAGENET_MEAN, "pixel_std": _IMAGENET_STD},
    "toy-tiny": {"img_size": 128, "pixel_mean": _IMAGENET_MEAN, "pixel_std": _IMAGENET_STD},
}
MASK_THRESHOLD = 0.0  # logits above this are mask pixels
BUNDLED = "sam_toy"
KIND = "sam"


def list_models() -> list[str]:
    """Names accepted by :func:`build_sam` and (with ``vit_*``) :func:`load_sam`."""
    return sorted(SAM_CONFIGS)


def _segment_anything():
    try:
        import segment_anything.modeling as sam_modeling
    except ImportError as e:  # pragma: no cover - environment dependent
        raise ImportError("SAM export/training needs the segment-anything package: "
                          "pip install segment-anything (or pip install 'edgeseg[export]')") from e
    return sam_modeling


def build_sam(name: str | dict[str, Any], seed: int = 0) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` of config ``name`` (or an architecture dict) with seeded random
    weights, in eval mode."""
    if isinstance(name, str):
        if name not in SAM_CONFIGS:
            raise ValueError(f"unknown SAM config {name!r}; choose one of {list_models()}")
        arch, prep = SAM_CONFIGS[name], SAM_PREPROCESSING[name]
    else:
        arch = name
        prep = {"pixel_mean": _IMAGENET_MEAN, "pixel_std": _IMAGENET_STD}
    m = _segment_anything()
    size, patch, dim = arch["img_size"], arch["patch_size"], arch["prompt_embed_dim"]
    grid = size // patch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = m.Sam(
            image_encoder=m.ImageEncoderViT(
                img_size=size, patch_size=patch, embed_dim=arch["encoder_embed_dim"], depth=arch["encoder_depth"],
                num_heads=arch["encoder_num_heads"], mlp_ratio=4.0, out_chans=dim, qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=arch["window_size"],
                global_attn_indexes=tuple(arch["encoder_global_attn_indexes"])),
            prompt_encoder=m.PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                           input_image_size=(size, size), mask_in_chans=arch["mask_in_chans"]),
            mask_decoder=m.MaskDecoder(
                num_multimask_outputs=arch["num_multimask_outputs"],
                transformer=m.TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=dim,
                                                mlp_dim=arch["decoder_mlp_dim"], num_heads=arch["decoder_num_heads"]),
                transformer_dim=dim, iou_head_depth=arch["iou_head_depth"],
                iou_head_hidden_dim=arch["iou_head_hidden_dim"]),
            pixel_mean=list(prep["pixel_mean"]), pixel_std=list(prep["pixel_std"]))
    return sam.eval()


def sam_config(name: str, arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """The loader config of a SAM: name, architecture, preprocessing, mask threshold and grid sizes."""
    arch = dict(arch or SAM_CONFIGS[name])
    prep = copy.deepcopy(SAM_PREPROCESSING.get(name, {"img_size": arch["img_size"], "pixel_mean": _IMAGENET_MEAN,
                                                      "pixel_std": _IMAGENET_STD}))
    grid = arch["img_size"] // arch["patch_size"]
    return {"name": name, "kind": KIND, "architecture": arch, "preprocessing": prep, "mask_threshold": MASK_THRESHOLD,
            "embedding_grid": grid, "embed_dim": arch["prompt_embed_dim"], "low_res_size": 4 * grid}


def load_sam(spec: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(sam, cfg)`` from a checkpoint folder or bundled name (``sam_toy``, kind ``"sam"``), a config name
    (``"vit_b"``, ``"vit_h"``, ``"toy-tiny"``: random seeded weights) or ``"vit_h:/path/sam_vit_h.pth"``
    (official weights, strict load)."""
    from .checkpoint import load_checkpoint

    text = str(spec)
    name, sep, path = text.partition(":")
    if name in SAM_CONFIGS and (not sep or path):
        sam = build_sam(name)
        if path:
            _load_official(sam, name, Path(path))
        return sam, sam_config(name)
    state, config = load_checkpoint(spec, KIND)
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise ValueError(f"SAM checkpoint {spec!r} has no 'architecture' dict in its config.json; retrain it "
                         f"with edgeseg.train.train_sam")
    sam = build_sam(arch)
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"SAM checkpoint {spec!r} does not fit its architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    cfg = sam_config(config.get("name", "toy-tiny"), arch)
    cfg.update({k: v for k, v in config.items() if k in ("preprocessing", "mask_threshold", "metrics", "recipe")})
    return sam.eval(), cfg


def _load_official(sam: nn.Module, name: str, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"SAM weights {str(path)!r} not found; download sam_{name}_*.pth from "
                                f"https://github.com/facebookresearch/segment-anything#model-checkpoints")
    from .checkpoint import safe_torch_load

    state = safe_torch_load(path, f"SAM {name}")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a SAM state dict")
    have = sam.state_dict()
    bad = [k for k, v in state.items() if k in have and tuple(v.shape) != tuple(have[k].shape)]
    missing, unexpected = sorted(set(have) - set(state)), sorted(set(state) - set(have))
    if bad or missing or unexpected:
        raise ValueError(f"{path} does not fit SAM {name!r}: {len(bad)} shape mismatches {bad[:3]}, missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}; is it the weights of another SAM size? "
                         f"use 'vit_b:' or 'vit_h:' to match the file")
    sam.load_state_dict(state, strict=True)


def predict_masks(decoder: nn.Module, src: torch.Tensor, image_pe: torch.Tensor, tokens_sparse: torch.Tensor,
                  dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder.predict_masks`` with the image embedding already given per prompt.

    src: N x C x g x g image embeddings (one per prompt: training batches prompts of several images; the export
    expands one image's embedding, where the original's ``repeat_interleave`` would freeze the prompt count);
    image_pe: 1 x C x g x g; tokens_sparse: N x P x C; dense: 1 or N x C x g x g.
    Returns (N x K x 4g x 4g mask logits, N x K predicted IoU), K = 1 + num_multimask_outputs (index 0 is the
    single-mask output, 1.. the multimask outputs used by automatic mask generation).
    """
    n = tokens_sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), tokens_sparse], dim=1)
    src = src + dense
    pos = image_pe.expand(n, -1, -1, -1)
    c, h, w = src.shape[1], src.shape[2], src.shape[3]
    hs, src = decoder.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_out = hs[:, 1:1 + decoder.num_mask_tokens, :]
    up = decoder.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))
    hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    cu, hu, wu = up.shape[1], up.shape[2], up.shape[3]
    masks = (hyper @ up.reshape(n, cu, hu * wu)).reshape(n, -1, hu, wu)
    return masks, decoder.iou_prediction_head(iou_out)


def embed_points(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sparse prompt embeddings N x P x C without boolean indexing (traceable): coords N x P x 2 in the S x S
    input frame, labels N x P float (1 fg, 0 bg, -1 padding, 2 / 3 box corners)."""
    size = float(prompt_encoder.input_image_size[0])
    pe = prompt_encoder.pe_layer._pe_encoding((coords + 0.5) / size)
    lab = labels.unsqueeze(-1)
    emb = pe * (lab != -1).to(pe.dtype) + prompt_encoder.not_a_point_embed.weight * (lab == -1).to(pe.dtype)
    for i, table in enumerate(prompt_encoder.point_embeddings):
        emb = emb + table.weight * (lab == i).to(pe.dtype)
    return emb
