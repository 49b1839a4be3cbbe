"""Latent diffusion (Stable Diffusion style) models for Ref-Diff: architecture registry, builders and loaders.

Architectures are plain dicts (diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` configs and a transformers
``CLIPTextConfig``); weights and preprocessing facts live apart in :data:`LDM_WEIGHTS`.

``load_ldm(spec)`` accepts:
- a checkpoint folder or bundled name (``ldm_toy``): kind ``"ldm"``, keys prefixed ``text_encoder.``, ``vae.``,
  ``unet.``;
- ``"sd15"`` / ``"toy-tiny"``: random weights at that architecture;
- ``"sd15:/path/to/diffusers_folder"``: subfolders ``unet/``, ``vae/``, ``text_encoder/`` (``from_pretrained``,
  ``local_files_only=True``);
- ``"sd15:/path/to/v1-5.safetensors"`` or ``.ckpt``: an original single-file LDM checkpoint (UNet, VAE and
  text encoder; fp16 or fp32; .ckpt read with ``weights_only``), mapped against the local configs by
  :mod:`.ldm_single_file` (nothing is downloaded). A file holding EMA and non-EMA UNet weights loads the
  non-EMA ones, as diffusers' ``from_single_file`` does; ``"sd15+ema:/path/to/v1-5-pruned.ckpt"`` loads the EMA
  ones.

It returns ``(text_encoder, vae, unet, cfg)`` in eval mode; ``cfg`` holds preprocessing, the VAE scaling factor,
the scheduler, the attention grid and the tokenizer facts the numpy runtime needs.
"""

from __future__ import annotations

import functools

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ldm_single_file import convert_text_encoder, load_single_file_into

__all__ = ["LDM_CONFIGS", "LDM_WEIGHTS", "build_ldm", "build_modules", "convert_text_encoder", "ldm_state",
           "list_models", "load_ldm", "make_cfg", "parse_spec", "sd_tokenize", "word_token_index"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": False,
             "prediction_type": "epsilon"}
TOKENIZER = {"context_length": 77, "pad_id": 49407}


def _json(name: str) -> dict:
    return json.loads((CONFIG_DIR / name).read_text())


LDM_CONFIGS: dict[str, dict[str, dict]] = {
    "sd15": {"unet": _json("sd15-unet.json"), "vae": _json("sd15-vae.json"), "text": _json("sd15-text.json")},
    "toy-tiny": _json("ldm-toy-tiny.json"),
}

LDM_WEIGHTS: dict[str, dict[str, Any]] = {
    # image_size: the VAE input side; Ref-Diff runs SD at larger sizes too (set image_size when loading).
    "sd15": {"scaling_factor": 0.18215, "image_size": 512, "mean": [0.5] * 3, "std": [0.5] * 3,
             "query_downscale": 4, "resolutions": [16, 32]},
    "toy-tiny": {"scaling_factor": 1.0, "image_size": 96, "mean": [0.5] * 3, "std": [0.5] * 3,
                 "query_downscale": 2, "resolutions": [12, 24]},
}


def list_models() -> list[str]:
    """Names of the registered LDM architectures."""
    return sorted(LDM_CONFIGS)


def _arch(name: str) -> dict[str, dict]:
    if name not in LDM_CONFIGS:
        raise ValueError(f"unknown LDM architecture {name!r}; choose one of {list_models()}")
    return copy.deepcopy(LDM_CONFIGS[name])


def _import_diffusers():
    try:
        import diffusers
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("latent diffusion models need diffusers and transformers: "
                          "pip install 'diffusers>=0.30' 'transformers>=4.40'") from e
    return diffusers, transformers


def vae_downscale(arch: dict[str, dict]) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1)."""
    return 2 ** (len(arch["vae"]["block_out_channels"]) - 1)


def make_cfg(name: str, arch: dict[str, dict], image_size: int | tuple[int, int] | None = None,
             weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """The runtime facts of an LDM (see module doc)."""
    w = dict(LDM_WEIGHTS.get(name, LDM_WEIGHTS["toy-tiny"]), **(weights or {}))
    size = image_size if image_size is not None else w["image_size"]
    hw = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    down = vae_downscale(arch)
    if hw[0] % (down * w["query_downscale"]) or hw[1] % (down * w["query_downscale"]):
        raise ValueError(f"image size {hw} must be a multiple of {down * w['query_downscale']} "
                         f"(VAE x{down}, attention grid x{w['query_downscale']}); pick e.g. {w['image_size']}")
    # resolutions are query-grid heights at the default image size: they scale with the image
    res = [int(r) * hw[0] // int(w["image_size"]) for r in w["resolutions"]]
    return {"name": name, "preprocessing": {"image_size": hw, "mean": list(w["mean"]), "std": list(w["std"])},
            "scaling_factor": float(w["scaling_factor"]), "scheduler": dict(SCHEDULER),
            "attention": {"query_downscale": int(w["query_downscale"]), "resolutions": res},
            "tokenizer": dict(TOKENIZER), "latent_shape": [arch["vae"]["latent_channels"], hw[0] // down,
                                                           hw[1] // down]}


def build_modules(arch: dict[str, dict], seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(text_encoder, vae, unet) with seeded random weights from architecture dicts."""
    diffusers, transformers = _import_diffusers()
    torch.manual_seed(seed)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**arch["text"]))
    vae = diffusers.AutoencoderKL(**arch["vae"])
    unet = diffusers.UNet2DConditionModel(**arch["unet"])
    return text.eval(), vae.eval(), unet.eval()


def build_ldm(name: str, seed: int = 0, image_size: int | tuple[int, int] | None = None
              ) -> tuple[nn.Module, nn.Module, nn.Module, dict[str, Any]]:
    """Random-weight (seeded, reproducible) ``(text_encoder, vae, unet, cfg)`` of a registered architecture."""
    arch = _arch(name)
    text, vae, unet = build_modules(arch, seed)
    return text, vae, unet, make_cfg(name, arch, image_size)


def ldm_state(text: nn.Module, vae: nn.Module, unet: nn.Module) -> dict[str, torch.Tensor]:
    """One state dict with ``text_encoder.``, ``vae.``, ``unet.`` prefixes (the checkpoint layout)."""
    state = {}
    for prefix, m in (("text_encoder.", text), ("vae.", vae), ("unet.", unet)):
        state.update({prefix + k: v for k, v in m.state_dict().items()})
    return state


def _split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{what} weights do not fit the architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; check the config the checkpoint was saved with")


def load_checkpoint_ldm(path: str | Path) -> tuple[nn.Module, nn.Module, nn.Module, dict[str, Any]]:
    """An ``ldm`` checkpoint folder (or bundled name) -> ``(text_encoder, vae, unet, cfg)``."""
    from edgeseg.train.checkpoint import load_checkpoint, resolve_checkpoint

    state, config = load_checkpoint(path, kind="ldm")
    arch = config["architecture"]
    text, vae, unet = build_modules(arch)
    for prefix, m in (("text_encoder.", text), ("vae.", vae), ("unet.", unet)):
        _load_into(m, _split_state(state, prefix), prefix.rstrip("."))
    cfg = dict(config["ldm_cfg"])
    cfg["checkpoint"] = str(resolve_checkpoint(path))
    cfg["metrics"] = config.get("metrics", {})
    cfg["weights_sha256"] = config.get("weights_sha256", "")
    return text.eval(), vae.eval(), unet.eval(), cfg


def _load_diffusers_folder(name: str, folder: Path) -> tuple[nn.Module, nn.Module, nn.Module]:
    diffusers, transformers = _import_diffusers()
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder} has no {sub}/ subfolder; a diffusers Stable Diffusion folder holds "
                                    f"unet/, vae/ and text_encoder/ (e.g. from save_pretrained)")
    kw = {"local_files_only": True}
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", **kw)
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", **kw)
    text = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder", **kw)
    return text, vae, unet


def _load_single_file(name: str, path: Path, ema: bool = False) -> tuple[nn.Module, nn.Module, nn.Module]:
    """An original LDM single file at architecture ``name`` (see :mod:`.ldm_single_file`)."""
    text, vae, unet = build_modules(_arch(name))
    load_single_file_into(path, text, vae, unet, ema=ema)
    return text, vae, unet


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``"sd15"`` -> (name, "", False); ``"sd15:/where"`` -> (name, where, False); ``"sd15+ema:/file"`` ->
    (name, file, True); anything else (a checkpoint folder or bundled name) -> (spec, "", False)."""
    head, sep, where = spec.partition(":")
    name, plus, flag = head.partition("+")
    if not sep or name not in LDM_CONFIGS:
        return spec, "", False
    if plus and flag != "ema":
        raise ValueError(f"unknown option {'+' + flag!r} in {spec!r}; the only one is '+ema' "
                         f"('{name}+ema:<file.ckpt>': the EMA UNet weights of a single file)")
    return name, where, bool(plus)


def load_ldm(spec: str | Path, image_size: int | tuple[int, int] | None = None
             ) -> tuple[nn.Module, nn.Module, nn.Module, dict[str, Any]]:
    """``(text_encoder, vae, unet, cfg)`` in eval mode from a spec (see the module doc)."""
    s = str(spec)
    name, where, ema = parse_spec(s)
    if name in LDM_CONFIGS and not where:
        text, vae, unet, cfg = build_ldm(name, image_size=image_size)
        cfg["checkpoint"] = f"{name} (random weights)"
        return text, vae, unet, cfg
    if not where:
        text, vae, unet, cfg = load_checkpoint_ldm(s)
        if image_size is not None:
            cfg = dict(make_cfg(cfg["name"], {"vae": vae.config}, image_size, _weights_of(cfg)),
                       checkpoint=cfg["checkpoint"], metrics=cfg["metrics"], weights_sha256=cfg["weights_sha256"])
        return text, vae, unet, cfg
    path = Path(where)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give '{name}:<diffusers folder>' or "
                                f"'{name}:<file.safetensors|.ckpt>'")
    if path.is_dir() and ema:
        raise ValueError(f"'+ema' selects the EMA weights of a single-file checkpoint; {path} is a folder: give "
                         f"'{name}:{path}'")
    text, vae, unet = _load_diffusers_folder(name, path) if path.is_dir() else _load_single_file(name, path, ema)
    arch = {"vae": dict(vae.config)}
    w = dict(LDM_WEIGHTS[name])
    w["scaling_factor"] = float(getattr(vae.config, "scaling_factor", w["scaling_factor"]))
    cfg = make_cfg(name, arch, image_size, w)
    cfg["checkpoint"] = str(path)
    return text.eval(), vae.eval(), unet.eval(), cfg


def _weights_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"scaling_factor": cfg["scaling_factor"], "mean": cfg["preprocessing"]["mean"],
            "std": cfg["preprocessing"]["std"], "query_downscale": cfg["attention"]["query_downscale"],
            "resolutions": cfg["attention"]["resolutions"], "image_size": cfg["preprocessing"]["image_size"][0]}


def sd_tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """N x 77 int64 CLIP BPE ids, SD style: sot ... eot, padded with eot (49407). open_clip's cleaning (for
    training on ToyWorld's plain captions, where it equals SD's tokenizer); the bundle's ``sd_tokenizer`` reads
    any text as transformers' CLIPTokenizer of an SD 1.5 pipeline (``edgeseg.runtime.tokenizer``)."""
    import open_clip

    ids = open_clip.tokenize(list(texts), context_length=context_length)
    eot = ids.argmax(dim=-1, keepdim=True)  # eot has the largest id
    pos = torch.arange(context_length)[None]
    return torch.where(pos > eot, torch.full_like(ids, TOKENIZER["pad_id"]), ids).long()


@functools.lru_cache(maxsize=1)
def simple_tokenizer():
    """open_clip's BPE tokenizer, built once (building it reads the merges file: ~0.5 s)."""
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer()


def word_token_index(text: str, word: str, context_length: int = 77) -> int:
    """Position in :func:`sd_tokenize` output of the first token of ``word`` in ``text`` (raises if absent)."""
    tok = simple_tokenizer()
    ids = tok.encode(text)
    wid = tok.encode(word)
    for i in range(len(ids) - len(wid) + 1):
        if ids[i:i + len(wid)] == wid:
            if i + 1 >= context_length - 1:
                break
            return i + 1  # +1 for the start token
    raise ValueError(f"word {word!r} is not in {text!r} (within {context_length} tokens); use a word of the text")
