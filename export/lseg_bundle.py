"""LSeg bundle components: ``clip_text``, ``lseg_encoder``, ``lseg_head`` from an LSeg checkpoint. Registered in
:data:`edgeseg.methods.METHODS`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeseg.export import clip_text, lseg_encoder, lseg_head
from edgeseg.export.spec import ComponentSpec


def lseg_components(checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    from edgeseg.train.train_lseg import load_lseg

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
