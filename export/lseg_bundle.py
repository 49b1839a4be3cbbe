"""LSeg bundle components: ``clip_text``, ``lseg_encoder``, ``lseg_head`` from an edgeseg LSeg checkpoint, or from
lang-seg's official architecture (``lseg_vitl16_384``, ``lseg_vitb32_384``, ``lseg_tiny_official``; random
weights, or ``lseg_vitl16_384:/path/demo_e200.ckpt``: :mod:`edgeseg.train.lseg_official`). Registered in
:data:`edgeseg.methods.METHODS`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from edgeseg.export import clip_text, lseg_encoder, lseg_head
from edgeseg.export.spec import ComponentSpec


def lseg_components(checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    from edgeseg.train.lseg_official import official_lseg_spec
    from edgeseg.train.train_lseg import load_lseg

    official = official_lseg_spec(checkpoint)
    if official is not None:
        return official_components(*official)

    lseg, clip, cfg = load_lseg(checkpoint)
    size = tuple(cfg["preprocessing"]["image_size"])
    ctx, dim = cfg["tokenizer"]["context_length"], lseg.embed_dim
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(clip), clip_text.spec(ctx, dim)),
        lseg_encoder.NAME: (lseg_encoder.LSegEncoderWrapper(lseg), lseg_encoder.spec(size, dim)),
        lseg_head.NAME: (lseg_head.LSegHeadWrapper(lseg), lseg_head.spec(size, dim)),
    }
    info = {"preprocessing": cfg["preprocessing"], "context_length": ctx,
            "method_config": {"temperature": lseg.config.temperature, "template": cfg["text_encoder"]["template"],
                              "labels_trained": cfg.get("labels_trained", []), "architecture": cfg["architecture"]},
            "metrics": cfg.get("metrics", {})}
    return comps, info


def official_components(name: str, weights: str | None) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """The components of lang-seg's LSeg ``name`` (random seeded weights, or the checkpoint ``weights``), with
    lang-seg's evaluation preprocessing: mean = std = 0.5, long side to ``base_size`` (bilinear,
    align_corners=True), windows of ``crop_size`` at a stride of 2/3 of it, padded with black."""
    from edgeseg.runtime.fileio import sha256_file
    from edgeseg.train.lseg_official import load_official_lseg

    model = load_official_lseg(name, weights)
    c = model.config
    size, dim = (c.crop_size, c.crop_size), model.embed_dim
    model.fix_input_size(*size)
    ctx = int(model.clip_pretrained.positional_embedding.shape[0])
    stride = int(c.crop_size * c.stride_rate)
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(model.clip_pretrained), clip_text.spec(ctx, dim)),
        lseg_encoder.NAME: (lseg_encoder.LSegEncoderWrapper(model), lseg_encoder.spec(size, dim)),
        # the head (cosine, the shared 3x3 head block, x2) stays FP32 in INT8 builds: cheap, and its input is
        # not an image the calibration could feed
        lseg_head.NAME: (lseg_head.LSegHeadWrapper(model), replace(lseg_head.spec(size, dim), int8_exclude=(".*",))),
    }
    prep = {"image_size": list(size), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "recipe": "lseg-encoding",
            "base_size": c.base_size, "window": list(size), "stride": [stride, stride],
            "layout": "1x3xHxW float32 RGB, (x/255 - mean) / std, then bilinear (align_corners=True) to the long "
                      "side base_size; windows of image_size"}
    info = {"preprocessing": prep, "context_length": ctx,
            "method_config": {"temperature": 1.0 / c.logit_scale, "template": "{}", "labels_trained": [],
                              "architecture": dict(c.to_dict(), official="isl-org/lang-seg LSegNet", name=name)},
            "source": {"checkpoint": f"{name}:{weights}" if weights else name,
                       "weights_sha256": sha256_file(weights) if weights else None,
                       "weights": "lang-seg checkpoint" if weights else "random (seed 0)"},
            "metrics": {}}
    return comps, info
