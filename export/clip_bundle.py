"""CLIP bundle components: ``clip_text`` and ``clip_image`` (open_clip towers). Registered in
:data:`edgeseg.methods.METHODS`."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeseg.export import clip_image, clip_text
from edgeseg.export.spec import ComponentSpec


def clip_components(checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """A CLIP checkpoint folder, or ``ViT-B-16[:/path/to/open_clip.pt]`` (random init without a path)."""
    from edgeseg.train.clip import clip_config, clip_preprocessing, create_clip, load_clip, registered_clip

    registered = registered_clip(checkpoint)
    if registered:
        clip, arch = create_clip(*registered), registered[0]
    else:
        clip, cfg = load_clip(checkpoint)
        arch = cfg["architecture"]["name"]
    ccfg = clip_config(arch)
    # CLIP embeddings are open_clip's: shortest side bicubic + centre crop (runtime.images recipe "openclip")
    prep = dict(clip_preprocessing(arch, clip), recipe="openclip", resize="bicubic shortest side, centre crop",
                layout="1x3xHxW float32 RGB: shortest side to image_size (PIL bicubic), centre crop, "
                       "(x/255 - mean) / std")
    ctx, dim = ccfg["text_cfg"]["context_length"], ccfg["embed_dim"]
    comps = {
        clip_text.NAME: (clip_text.ClipTextWrapper(clip), clip_text.spec(ctx, dim)),
        clip_image.NAME: (clip_image.ClipImageWrapper(clip.visual),
                          clip_image.spec(tuple(prep["image_size"]), tuple(clip.visual.grid_size), dim)),
    }
    return comps, {"preprocessing": prep, "context_length": ctx, "method_config": {"architecture": arch,
                                                                                 "template": "{}"}}
