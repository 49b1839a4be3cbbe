"""IFSeg bundle components: ``clip_text``, ``ifseg_encoder``, ``ifseg_head`` (decoder + frozen CLIP). Registered in
:data:`edgeseg.methods.METHODS`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeseg.export import clip_text, ifseg_encoder, ifseg_head
from edgeseg.export.spec import ComponentSpec


def ifseg_components(checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """An IFSeg checkpoint folder (decoder + the frozen CLIP it names), or ``ViT-B-16[:/path/to/open_clip.pt]``:
    that CLIP (random init without a path) with a randomly initialized full-size decoder, for export checks."""
    from edgeseg.train.clip import clip_config, clip_preprocessing, create_clip, registered_clip, seeded
    from edgeseg.train.ifseg import IFSEG_CONFIGS, IFSegDecoder
    from edgeseg.train.train_ifseg import KNN_DEFAULTS, TEMPLATE, load_ifseg

    registered = registered_clip(checkpoint)
    if registered:
        name = registered[0]
        clip = create_clip(*registered)
        with seeded(0):  # verify rebuilds the same random decoder
            decoder = IFSegDecoder(IFSEG_CONFIGS["vit-b16" if name.startswith("ViT-B-16") else name]).eval()
        ctx = clip_config(name)["text_cfg"]["context_length"]
        cfg = {"preprocessing": clip_preprocessing(name, clip), "knn": dict(KNN_DEFAULTS),
               "clip": {"template": TEMPLATE}, "tokenizer": {"context_length": ctx}}
    else:
        decoder, clip, cfg = load_ifseg(checkpoint)
    size, ctx = tuple(cfg["preprocessing"]["image_size"]), cfg["tokenizer"]["context_length"]
    dim, grid = decoder.config.embed_dim, tuple(clip.visual.grid_size)
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(clip), clip_text.spec(ctx, dim)),
        ifseg_encoder.NAME: (ifseg_encoder.IFSegEncoderWrapper(clip.visual), ifseg_encoder.spec(size, grid, dim)),
        ifseg_head.NAME: (ifseg_head.IFSegHeadWrapper(decoder), ifseg_head.spec(grid, dim)),
    }
    info = {"preprocessing": cfg["preprocessing"], "context_length": ctx,
            "method_config": {"template": cfg["clip"]["template"], "knn": cfg["knn"],
                              "vocabulary_trained": cfg.get("vocabulary", []),
                              "architecture": decoder.config.to_dict()},
            "metrics": cfg.get("metrics", {})}
    return comps, info
