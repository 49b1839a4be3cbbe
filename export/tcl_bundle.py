"""``edgeseg export tcl CHECKPOINT``: the TCL components of a checkpoint (``edgeseg train tcl``), or of a
registered CLIP config (``ViT-B-16`` with random weights, or ``ViT-B-16:/path/open_clip.pt``; the decoder
random, seeded so verify rebuilds the same weights). Registered in :data:`edgeseg.methods.METHODS`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeseg.export import clip_text, tcl_encoder, tcl_head
from edgeseg.export.spec import ComponentSpec


def tcl_components(checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """(name -> (export wrapper, spec), bundle info) of a TCL checkpoint folder or a CLIP config name."""
    from edgeseg.train.clip import clip_config, clip_preprocessing, create_clip, registered_clip, seeded
    from edgeseg.train.tcl import PAMR_DILATIONS, PAMR_ITERATIONS, TCL, TCL_CONFIGS
    from edgeseg.train.train_tcl import BG_THRESHOLD, TEMPLATE, load_tcl

    registered = registered_clip(checkpoint)
    if registered:
        name = registered[0]
        if name not in TCL_CONFIGS:
            raise ValueError(f"no TCL config for CLIP {name!r}; have {sorted(TCL_CONFIGS)}")
        clip = create_clip(*registered)  # user CLIP weights (ViT-B-16:/path) or random init
        with seeded(0):  # seeded decoder init: export and verify rebuild the same weights
            model = TCL(TCL_CONFIGS[name], clip).eval()
        cfg = {"preprocessing": clip_preprocessing(name, clip),
               "tokenizer": {"context_length": clip_config(name)["text_cfg"]["context_length"]},
               "text_encoder": {"template": TEMPLATE}, "metrics": {},
               "inference": {"bg_threshold": BG_THRESHOLD, "pamr_iterations": PAMR_ITERATIONS,
                             "pamr_dilations": list(PAMR_DILATIONS)}}
    else:
        model, cfg = load_tcl(checkpoint)
    size = tuple(cfg["preprocessing"]["image_size"])
    grid = tuple(model.clip.visual.grid_size)
    ctx, dim = cfg["tokenizer"]["context_length"], model.embed_dim
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(model.clip), clip_text.spec(ctx, dim)),
        tcl_encoder.NAME: (tcl_encoder.TCLEncoderWrapper(model), tcl_encoder.spec(size, grid, dim)),
        tcl_head.NAME: (tcl_head.TCLHeadWrapper(model), tcl_head.spec(size, grid, dim)),
    }
    inf = cfg["inference"]
    info = {"preprocessing": cfg["preprocessing"], "context_length": ctx,
            "method_config": {"template": cfg["text_encoder"]["template"], "bg_threshold": inf["bg_threshold"],
                              "pamr": {"iterations": inf["pamr_iterations"], "dilations": inf["pamr_dilations"],
                                       "resolution": "model input"},
                              "w": model.w.item(), "b": model.b.item(), "architecture": model.config.to_dict()},
            "metrics": cfg.get("metrics", {})}
    return comps, info
