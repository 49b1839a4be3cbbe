"""``edgeseg export tcl CHECKPOINT``: the TCL components of a checkpoint (``edgeseg train tcl``), of a
registered CLIP config (``ViT-B-16`` with random weights, or ``ViT-B-16:/path/open_clip.pt``; the decoder
random, seeded so verify rebuilds the same weights), or of TCL's official architecture (``tcl_vitb16``,
``tcl_tiny_official``; random, or ``tcl_vitb16:/path/tcl.pth[,/path/ViT-B-16.pt]``:
:mod:`edgeseg.train.tcl_official`). Registered in :data:`edgeseg.methods.METHODS`."""

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

    from edgeseg.train.tcl_official import official_tcl_spec

    official = official_tcl_spec(checkpoint)
    if official is not None:
        return official_components(*official)
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
                                       "resolution": "tcl mask (order official); model input (order mix-first)"},
                              "kp_weight": model.config.kp_weight, "order": "official",
                              "w": model.w.item(), "b": model.b.item(), "architecture": model.config.to_dict()},
            "metrics": cfg.get("metrics", {})}
    return comps, info


def official_components(name: str, weights: str | None,
                        clip_weights: str | None) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """The components of TCL's official architecture ``name`` with TCL's evaluation settings: mmseg's
    preprocessing (short side 448 within 2048, OpenCV bilinear, ImageNet mean/std), windows of 448 at stride 224,
    PAMR 10 x [1, 2, 4, 8, 12, 24] on the TCL mask, then 0.3 MaskCLIP + 0.7 TCL, background 0.4."""
    from edgeseg.runtime.fileio import sha256_file
    from edgeseg.train.tcl import PAMR_DILATIONS, PAMR_ITERATIONS
    from edgeseg.train.tcl_official import IMAGENET_MEAN, IMAGENET_STD, load_official_tcl

    model = load_official_tcl(name, weights, clip_weights)
    win = model.window
    model.fix_input_size(win, win)
    size, grid, dim = (win, win), (win // model.patch, win // model.patch), model.embed_dim
    ctx = int(model.clip_text_encoder.positional_embedding.shape[0])
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(model.clip_text_encoder), clip_text.spec(ctx, dim)),
        tcl_encoder.NAME: (tcl_encoder.TCLEncoderWrapper(model), tcl_encoder.spec(size, grid, dim)),
        tcl_head.NAME: (tcl_head.TCLHeadWrapper(model), tcl_head.spec(size, grid, dim)),
    }
    scale = [2048 * win // 448, win]  # TCL's Resize img_scale (2048, 448), scaled with the window for tiny configs
    prep = {"image_size": list(size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "recipe": "mmseg-rescale", "scale": scale, "window": list(size), "stride": [win // 2, win // 2],
            "layout": "1x3xHxW float32 RGB: resized (OpenCV bilinear) into the (long, short) box scale, then "
                      "(x/255 - mean) / std; windows of image_size"}
    sha = {"tcl": sha256_file(weights) if weights else None,
           "clip": sha256_file(clip_weights) if clip_weights else None}
    info = {"preprocessing": prep, "context_length": ctx,
            "method_config": {"template": "a photo of a {}.", "bg_threshold": 0.4,
                              "pamr": {"iterations": PAMR_ITERATIONS, "dilations": list(PAMR_DILATIONS),
                                       "resolution": "tcl mask"},
                              "kp_weight": model.kp_weight, "order": "official",
                              "w": model.w.item(), "b": model.b.item(),
                              "architecture": {"name": name, "official": "kakaobrain/tcl TCL (configs/tcl.yml)"}},
            "source": {"checkpoint": str(f"{name}:{weights}" + (f",{clip_weights}" if clip_weights else "")
                                         if weights else name),
                       "weights_sha256": sha["tcl"], "clip_weights_sha256": sha["clip"],
                       "weights": "TCL checkpoint" if weights else "random (seed 0)"},
            "metrics": {}}
    return comps, info
