"""Original-LDM single-file Stable Diffusion 1.x checkpoints -> diffusers UNet / VAE and transformers text encoder.

The files users bring (``v1-5-pruned-emaonly.safetensors``, ``v1-5-pruned.ckpt``, fine-tunes saved by the
original code or by diffusers' ``convert_diffusers_to_original_stable_diffusion.py``) hold one flat state dict:

- ``model.diffusion_model.*``: the UNet (``openaimodel.UNetModel`` names);
- ``first_stage_model.*``: the VAE (``AutoencoderKL`` of ``ldm/models/autoencoder.py``);
- ``cond_stage_model.transformer.text_model.*`` (older exports: without ``text_model.``): the CLIP text encoder;
- optionally ``model_ema.*``: the EMA copy of the UNet, one flat name per parameter (``model_ema.`` +
  ``diffusion_model`` + the UNet key without dots, as ``ldm/modules/ema.py`` names its buffers), plus
  ``model_ema.decay`` / ``model_ema.num_updates``; and schedule buffers (``betas``, ``alphas_cumprod``, ...).

Everything is read offline against the configs edgeseg gives (nothing is downloaded): ``.safetensors`` with
safetensors, ``.ckpt``/``.pt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)`` (a ``state_dict`` entry,
nested or not, is unwrapped as diffusers does); UNet and VAE keys are mapped by diffusers' conversion functions
(``diffusers.loaders.single_file_utils``, pure key mapping given a config), the text encoder by
:func:`convert_text_encoder`. Weights stored in fp16 (or bf16) are loaded into fp32 modules.

EMA: a file with both sets (``v1-5-pruned``) loads the non-EMA UNet weights (``model.diffusion_model.*``) by
default, as diffusers' ``from_single_file`` (``extract_ema=False``) and the SD v1 inference config
(``use_ema: False``, which the released Ref-Diff code uses) do; ``ema=True`` (spec ``sd15+ema:<file>``) loads the
``model_ema.*`` copy instead. ``-emaonly`` files already store the EMA weights as ``model.diffusion_model.*``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
FIX = "give an original SD 1.x checkpoint (UNet, VAE and text encoder in one file) or a diffusers folder"


def read_single_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a single-file checkpoint (``.safetensors``, or a tensors-only torch file);
    one-line ValueError naming the file for anything else (pickled code, corrupt or truncated payload)."""
    from .checkpoint import safe_safetensors_load, safe_torch_load

    path = Path(path)
    if path.suffix == ".safetensors":
        state: Any = safe_safetensors_load(path, "Stable Diffusion")
    elif path.suffix in TORCH_SUFFIXES:
        state = safe_torch_load(path, "Stable Diffusion")
        while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    else:
        raise ValueError(f"{path} is neither .safetensors nor .ckpt; give an original LDM single-file checkpoint "
                         f"or a diffusers folder")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no flat state dict of tensors (got {type(state).__name__}); {FIX}")
    return state


def ema_key(key: str) -> str:
    """``model.diffusion_model.input_blocks.0.0.weight`` -> ``model_ema.diffusion_modelinput_blocks00weight``."""
    return EMA_PREFIX + key[len("model."):].replace(".", "")


def has_ema(state: dict[str, torch.Tensor]) -> bool:
    """Whether the file carries an EMA copy of the UNet besides ``model.diffusion_model.*``."""
    return any(k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING for k in state)


def check_parts(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise a one-line ValueError naming ``path`` and the missing part, unless UNet, VAE and text encoder are
    all there."""
    for prefix, part in ((UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE"), (TEXT_PREFIX, "text encoder")):
        if not any(k.startswith(prefix) for k in state):
            hint = ""
            if prefix == TEXT_PREFIX and any(k.startswith("cond_stage_model.model.") for k in state):
                hint = " (it has an OpenCLIP text encoder, cond_stage_model.model.*: an SD 2.x file)"
            raise ValueError(f"{path} has no {prefix}* weights (the {part}){hint}; {FIX}")


def select_unet(state: dict[str, torch.Tensor], path: str | Path, ema: bool) -> dict[str, torch.Tensor]:
    """``state`` with the UNet weights to load under ``model.diffusion_model.*``: the non-EMA ones (default), or
    with ``ema`` the ``model_ema.*`` copy (every UNet parameter must have one). ``model_ema.*`` keys are dropped."""
    out = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    if not ema:
        if has_ema(state):
            warnings.warn(f"{path} holds EMA and non-EMA UNet weights; loading the non-EMA ones "
                          f"(model.diffusion_model.*) as diffusers' from_single_file does; use "
                          f"'sd15+ema:{path}' for the EMA weights", stacklevel=3)
        return out
    if not has_ema(state):
        raise ValueError(f"{path} has no EMA weights (model_ema.*): its model.diffusion_model.* are the only UNet "
                         f"weights (-emaonly files store the EMA weights there); load it without +ema")
    unet_keys = [k for k in state if k.startswith(UNET_PREFIX)]
    missing = [k for k in unet_keys if ema_key(k) not in state]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {len(unet_keys)} UNet weights have no EMA copy (e.g. "
                         f"{ema_key(missing[0])}); load it without +ema for the non-EMA weights")
    out.update({k: state[ema_key(k)] for k in unet_keys})
    return out


def convert_text_encoder(state: dict[str, torch.Tensor], module_keys: Iterable[str] | None = None
                         ) -> dict[str, torch.Tensor]:
    """The ``cond_stage_model.transformer.*`` weights of an original LDM checkpoint -> the state dict of
    transformers' ``CLIPTextModel``. Real SD 1.x files carry ``cond_stage_model.transformer.text_model.*``; older
    exports and diffusers' own conversion script (under transformers 5) differ by the ``text_model.`` level. Keys
    are first stripped of it, then given it back only where the target module's own keys (``module_keys``; None:
    transformers 5's layout, without ``text_model.``) use it."""
    text_sd = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    text_sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in text_sd.items()}
    nested = module_keys is not None and any(str(k).startswith("text_model.") for k in module_keys)
    return {("text_model." + k if nested else k): v for k, v in text_sd.items()}


def convert_unet_vae(state: dict[str, torch.Tensor], path: str | Path, unet_config: dict, vae_config: dict
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LDM UNet / VAE keys -> diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` state dicts (diffusers'
    key mapping against the given full configs; no download)."""
    from diffusers.loaders import single_file_utils as sfu

    try:
        unet_sd = sfu.convert_ldm_unet_checkpoint(state, dict(unet_config), extract_ema=False)
        vae_sd = sfu.convert_ldm_vae_checkpoint(state, dict(vae_config))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{path} does not match the UNet {list(unet_config.get('block_out_channels', []))} / "
                         f"VAE configs (missing {e}); is it an SD 1.x checkpoint?") from None
    return unet_sd, vae_sd


def fit(module: nn.Module, weights: dict[str, torch.Tensor], part: str, path: str | Path) -> None:
    """Load ``weights`` into ``module`` (cast to its dtype): every key must match, shapes included (the
    ``position_ids`` buffer, which transformers 5 no longer saves, is ignored)."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("position_ids")]
    unexpected = [k for k in weights if k not in own and not k.endswith("position_ids")]
    shape = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else
                  f"{shape[0]} is {list(weights[shape[0]].shape)}, the architecture wants {list(own[shape[0]].shape)}")
        raise ValueError(f"{path}: the {part} weights do not fit the architecture ({detail}); is it an SD 1.x "
                         f"checkpoint of the architecture given (e.g. sd15)?")
    module.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)


def load_single_file_into(path: str | Path, text: nn.Module, vae: nn.Module, unet: nn.Module, ema: bool = False
                          ) -> None:
    """Fill the built ``(text_encoder, vae, unet)`` with the weights of the single file at ``path`` (see the
    module doc for the layout and the EMA rule)."""
    state = read_single_file(path)
    check_parts(state, path)
    state = select_unet(state, path, ema)
    unet_sd, vae_sd = convert_unet_vae(state, path, dict(unet.config), dict(vae.config))
    fit(unet, unet_sd, "UNet", path)
    fit(vae, vae_sd, "VAE", path)
    fit(text, convert_text_encoder(state, text.state_dict().keys()), "text encoder", path)
