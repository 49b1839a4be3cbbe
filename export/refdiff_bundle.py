"""``edgeseg export refdiff CONFIG``: the nine Ref-Diff components in one bundle.

CONFIG is a registered name of :data:`REFDIFF_CONFIGS` or a JSON file of the same form, naming the three
models (each a bundled checkpoint, a registered architecture with random weights, or ``arch:/local/file``)::

    {"ldm": "sd15:/models/stable-diffusion-v1-5",      # diffusers folder or single-file .safetensors/.ckpt
     "sam": "vit_h:/models/sam_vit_h_4b8939.pth",
     "clip": "ViT-B-16:/models/open_clip_vit_b16.bin",
     "inference": {"alpha": 0.1, "beta": 0.3},        # optional overrides of REFDIFF_DEFAULTS
     "amg": {"points_per_side": 32},                   # optional overrides of the SAM mask generator
     "sd_image_size": 1024,                           # optional VAE input side (SD 1.5: 512; released: 1024)
     "sd_dynamic": true}                              # optional: dynamic VAE / UNet H x W (see below)

``sd_dynamic`` (configs ``toy-dynamic``, ``released-vit-h-nopad``): ``vae_encoder.image`` and ``unet_attn.sample``
take any H x W from one multiple (:func:`size_multiple`: 64 px for SD 1.5, 16 px for the toy) up to the VAE size
(opt = max), ``attn_logits`` a dynamic query axis; ``method_config.sd_dynamic`` records the range. It is what
``vae_geometry="released_resize"`` (the released ``diffusion_pad: False``) needs; the default bundles stay fixed.

Components: ``sd_text``, ``vae_encoder``, ``unet_attn`` (:mod:`.refdiff_sd`), ``sam_encoder``, ``sam_decoder``,
``sam_masks`` (:mod:`.refdiff_sam`), ``clip_text``, ``clip_masked`` and ``clip_hard`` (:mod:`.clip_hard`: the
released hard branch at the crop's aspect ratio, built on the same CLIP tower). Registered in
:data:`edgeseg.methods.METHODS`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from edgeseg.runtime.refdiff import DEFAULTS

from edgeseg.export.clip_hard import refdiff_hard_component
from edgeseg.export.clip_masked import refdiff_clip_components
from edgeseg.export import unet_attn
from edgeseg.export.spec import ComponentSpec

REFDIFF_CONFIGS = {  # name -> the three models; weights and files separate (see the module docstring)
    # ToyWorld referents are objects: SAM's stuff masks (the background, > half the image) are dropped, since
    # the tiny CLIP scores a masked background as high as an object (see README, Ref-Diff).
    # The released preset drops proposals of <= 10,000 px (RefCOCO's ~640 x 480 images); ToyWorld's 96 px
    # scenes (9,216 px) hold objects of ~150-700 px, so the toy bundle records 100 px instead.
    "toy": {"ldm": "ldm_toy", "sam": "sam_toy", "clip": "clip_toy", "amg": {"max_mask_fraction": 0.5},
            "preset_overrides": {"released": {"min_area": 100}}},
    "full-vit-b": {"ldm": "sd15", "sam": "vit_b", "clip": "ViT-B-16"},
    "full-vit-h": {"ldm": "sd15", "sam": "vit_h", "clip": "ViT-B-16"},
    # the released configs' geometry: diffusion_pad to 1024 px (128 x 128 latent, 32 x 32 attention logits)
    "released-vit-h": {"ldm": "sd15", "sam": "vit_h", "clip": "ViT-B-16", "sd_image_size": 1024},
    # opt-in dynamic-size SD side (sd_dynamic): the released non-padded geometry, vae_geometry="released_resize"
    "released-vit-h-nopad": {"ldm": "sd15", "sam": "vit_h", "clip": "ViT-B-16", "sd_image_size": 1024,
                             "sd_dynamic": True},
}
REFDIFF_CONFIGS["toy-dynamic"] = dict(REFDIFF_CONFIGS["toy"], sd_dynamic=True)
# Inference defaults (the runtime's): DDIM 20 steps x strength 0.1 (2 steps), guidance 9 and the position bias
# P on the hard branch as the released code; the paper's alpha 0.1 / beta 0.3 and masked input x*M.
REFDIFF_DEFAULTS = {k: DEFAULTS[k] for k in ("alpha", "beta", "guidance", "steps", "strength", "single_t", "proposals",
                                              "hard_branch", "position_bias", "parser", "seed")}


def list_configs() -> list[str]:
    return sorted(REFDIFF_CONFIGS)


def resolve_config(config: str | Path) -> dict:
    """A registered name or a JSON file -> {"ldm", "sam", "clip", "inference"}."""
    if str(config) in REFDIFF_CONFIGS:
        cfg = dict(REFDIFF_CONFIGS[str(config)])
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"Ref-Diff config {str(config)!r} is neither a registered name {list_configs()} "
                                    f"nor a JSON file")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); see edgeseg.export.refdiff_bundle for the form") from None
    missing = [k for k in ("ldm", "sam", "clip") if k not in cfg]
    if missing:
        raise ValueError(f"Ref-Diff config {str(config)!r} lacks {missing}; it needs ldm, sam and clip entries")
    unknown = sorted(set(cfg.get("inference", {})) - set(REFDIFF_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown inference option(s) {unknown} in {str(config)!r}; known: {sorted(REFDIFF_DEFAULTS)}")
    from edgeseg.runtime.sam_auto import AMG_DEFAULTS

    unknown = sorted(set(cfg.get("amg", {})) - set(AMG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown amg option(s) {unknown} in {str(config)!r}; known: {sorted(AMG_DEFAULTS)}")
    size = cfg.get("sd_image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 64 or size % 64):
        raise ValueError(f"Ref-Diff config {str(config)!r}: sd_image_size {size!r} must be an int >= 64, a multiple "
                         f"of 64 (the VAE input side; the released configs use 1024)")
    dynamic = cfg.get("sd_dynamic", False)
    if not isinstance(dynamic, bool):
        raise ValueError(f"Ref-Diff config {str(config)!r}: sd_dynamic {dynamic!r} must be true or false")
    return {"ldm": cfg["ldm"], "sam": cfg["sam"], "clip": cfg["clip"], "amg": dict(cfg.get("amg", {})),
            "sd_image_size": size, "sd_dynamic": dynamic,
            "inference": {**REFDIFF_DEFAULTS, **cfg.get("inference", {})},
            "preset_overrides": dict(cfg.get("preset_overrides", {}))}


def refdiff_components(config: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """(name -> (export wrapper, spec), bundle info) of a Ref-Diff config."""
    from edgeseg.export.refdiff_sam import sam_components
    from edgeseg.export.refdiff_sd import sd_components

    cfg = resolve_config(config)
    comps, sd_info = sd_components(cfg["ldm"], image_size=cfg["sd_image_size"])
    # unet_attn also outputs attn_logits at latent/4 (released preset); method_config.attention.logits says where
    comps[unet_attn.NAME], sd_info["attention"] = unet_attn.with_logits(*comps[unet_attn.NAME], sd_info["attention"])
    if cfg["sd_dynamic"]:
        sd_info["sd_dynamic"] = make_dynamic(comps)
    sam_comps, sam_info = sam_components(cfg["sam"])
    clip_comps, clip_info = refdiff_clip_components(cfg["clip"])
    comps.update(sam_comps)
    comps.update(clip_comps)
    # clip_hard: the same CLIP tower (shared weights) on hard-branch crops at their own aspect ratio (released)
    comps["clip_hard"], hard_info = refdiff_hard_component(clip_comps["clip_masked"][0].visual,
                                                           clip_info["preprocessing"])
    sam_info["amg"].update(cfg["amg"])
    method_config = {**cfg["inference"], "preset_overrides": cfg.get("preset_overrides", {}),
                     "template": "{}", "models": {k: str(cfg[k]) for k in ("ldm", "sam", "clip")},
                     "clip_masked": clip_info["clip_masked"], "clip_hard": hard_info,
                     **{k: v for k, v in sd_info.items() if k != "sd_tokenizer"}, **sam_info}
    info = {"preprocessing": clip_info["preprocessing"], "context_length": clip_info["context_length"],
            "method_config": method_config,
            "extra_tokenizers": {"sd_tokenizer": sd_info["sd_tokenizer"]},
            "source": {"checkpoint": str(config), "models": {k: str(cfg[k]) for k in ("ldm", "sam", "clip")}}}
    return comps, info


def size_multiple(unet: nn.Module, vae_downscale: int, logits_downscale: int = unet_attn.LOGITS_DOWNSCALE) -> int:
    """Pixels every dynamic VAE / UNet side must be a multiple of: VAE downscale x max(the UNet's downscale
    2 ** (levels - 1), the logits downscale) -> 8 x 8 = 64 for SD 1.5 (the released ``// 64 * 64``), 16 for the toy."""
    return int(vae_downscale) * max(2 ** (len(unet.config.block_out_channels) - 1), int(logits_downscale))


def make_dynamic(comps: dict[str, tuple[nn.Module, ComponentSpec]]) -> dict:
    """Turn ``vae_encoder`` and ``unet_attn`` (with logits) of ``comps`` into their dynamic-size variants, in place;
    -> the manifest's ``method_config.sd_dynamic``: ``multiple`` (px), ``image_min`` / ``image_opt`` /
    ``image_max`` [H, W] px and ``latent_min`` / ``latent_max`` [h, w]."""
    from edgeseg.export import vae_encoder

    vae, vspec = comps[vae_encoder.NAME]
    wrapper, uspec = comps[unet_attn.NAME]
    image = vspec.input("image").opt[2:]
    c, lh, lw = vspec.output("latent").shape[1:]
    down = int(image[0]) // int(lh)
    m = size_multiple(wrapper.unet, down)
    if image[0] % m or image[1] % m:
        raise ValueError(f"sd_dynamic: the VAE size {list(image)} must be a multiple of {m} px (VAE x{down}, UNet "
                         f"and logits downscale); pick sd_image_size accordingly")
    comps[vae_encoder.NAME] = (vae, vae_encoder.dynamic_spec(tuple(image), (c, lh, lw), m, vspec.input("image").max[0]))
    comps[unet_attn.NAME] = unet_attn.with_dynamic_size(wrapper, uspec, m // down)
    return {"multiple": m, "image_min": [m, m], "image_opt": list(image), "image_max": list(image),
            "latent_min": [m // down, m // down], "latent_max": [int(lh), int(lw)],
            "attention": "attn_logits: (h / 4) * (w / 4) queries of the latent given; attn: its fixed grid"}
