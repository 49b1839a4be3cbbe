"""The Stable Diffusion side of the Ref-Diff bundle: ``sd_text``, ``vae_encoder`` and ``unet_attn`` of an LDM.

``sd_components(checkpoint)`` takes what :func:`edgeseg.train.ldm.load_ldm` takes: the bundled ``ldm_toy`` (or another
``ldm`` checkpoint folder), ``sd15`` (random weights), ``sd15:/diffusers/folder``, ``sd15:/v1-5.safetensors`` (or
``.ckpt``; non-EMA UNet weights) or ``sd15+ema:/v1-5-pruned.ckpt`` (its EMA UNet weights).
The lead's ``export/refdiff_bundle.py`` merges these components with the SAM and CLIP ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgeseg.export import sd_text, unet_attn, vae_encoder
from edgeseg.export.spec import ComponentSpec
from edgeseg.export.tokenizer import SD_TOKENIZER_FACTS


def sd_components(checkpoint: str | Path = "ldm_toy", image_size: int | tuple[int, int] | None = None,
                  max_batch: int = 16, opset: int = 17
                  ) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict[str, Any]]:
    """(name -> (export wrapper, ComponentSpec), info) for an LDM; ``info`` is JSON-serializable (see below).

    info: ``vae_preprocessing`` (image_size [H, W], mean, std: image -> [-1, 1]), ``scaling_factor``,
    ``scheduler`` (diffusers DDPM/DDIM fields), ``attention`` (``grid`` [q_h, q_w], ``resolutions``, ``layers``),
    ``latent_shape`` [C, h, w], ``sd_tokenizer`` (context_length 77, pad_id 49407, cleaning ``"transformers"``:
    tokenized as transformers' CLIPTokenizer of an SD 1.5 pipeline), ``ldm`` (name, the ``checkpoint``
    given, its resolved ``path``, ``weights_sha256`` of an ldm checkpoint),
    ``metrics`` (of a trained checkpoint, else {})."""
    from edgeseg.train.ldm import load_ldm

    text, vae, unet, cfg = load_ldm(checkpoint, image_size=image_size)
    c, h, w = cfg["latent_shape"]
    down = cfg["attention"]["query_downscale"]
    wrapper = unet_attn.make_wrapper(unet, (h, w), cfg["attention"]["resolutions"], query_downscale=down)
    grid = tuple(wrapper.grid)
    ctx = cfg["tokenizer"]["context_length"]
    dim = int(text.config.hidden_size)
    comps = {
        sd_text.NAME: (sd_text.SDTextWrapper(text), sd_text.spec(ctx, dim, max_batch=2 * max_batch)),
        vae_encoder.NAME: (vae_encoder.VAEEncoderWrapper(vae, cfg["scaling_factor"]),
                           vae_encoder.spec(tuple(cfg["preprocessing"]["image_size"]), (c, h, w))),
        unet_attn.NAME: (wrapper, unet_attn.spec((c, h, w), grid, dim, ctx, max_batch, opset)),
    }
    info = {"vae_preprocessing": cfg["preprocessing"], "scaling_factor": cfg["scaling_factor"],
            "scheduler": cfg["scheduler"],
            "attention": {"grid": list(grid), "resolutions": list(wrapper.resolutions),
                          "layers": list(wrapper.layer_names)},
            "latent_shape": [c, h, w], "sd_tokenizer": dict(cfg["tokenizer"], cleaning=SD_TOKENIZER_FACTS["cleaning"]),
            "ldm": {"name": cfg["name"], "checkpoint": str(checkpoint), "path": cfg.get("checkpoint", str(checkpoint)),
                    "weights_sha256": cfg.get("weights_sha256", "")},
            "metrics": cfg.get("metrics", {})}
    return comps, info
