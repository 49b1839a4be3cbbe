"""The tests' own diffusers -> original LDM converter (the inverse of what edgeseg loads), written from the key
mapping diffusers publishes in ``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalized to
any number of levels and resnets per level so the tiny test architectures fit. It writes what real SD 1.x files
hold: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``
(with the ``position_ids`` buffer), schedule buffers, and optionally an EMA copy of the UNet (``model_ema.*``)."""

from __future__ import annotations

import torch


def _has_attention(block_type: str) -> bool:
    return block_type.startswith("CrossAttn")


def unet_prefixes(config: dict) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of a UNet2DConditionModel config."""
    n, per = len(config["block_out_channels"]), int(config["layers_per_block"])
    out = [("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
           ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False),
           ("conv_out.", "out.2.", False), ("mid_block.attentions.0.", "middle_block.1.", False),
           ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.resnets.1.", "middle_block.2.", True)]
    for i in range(n):
        for j in range(per):  # input_blocks: conv_in, then per level `per` (resnet[, attention]) and a downsample
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0.", True))
            out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.", False))
        if i < n - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.", False))
        for j in range(per + 1):  # output_blocks: per level per+1 (resnet[, attention]), the last with an upsample
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0.", True))
            out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.", False))
        if i < n - 1:
            slot = 2 if _has_attention(config["up_block_types"][i]) else 1
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{slot}.", False))
    return out


UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _rename(key: str, table: list[tuple[str, str, bool]], inner: dict[str, str]) -> tuple[str, bool]:
    hits = [(d, o, r) for d, o, r in table if key.startswith(d)]
    if len(hits) != 1:
        raise KeyError(f"{key}: {len(hits)} prefixes of the published mapping match")
    d, o, resnet = hits[0]
    rest = key[len(d):]
    if resnet:
        first, _, tail = rest.partition(".")
        rest = f"{inner.get(first, first)}.{tail}"
    return o + rest, resnet


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel state dict -> ``model.diffusion_model.*``."""
    table = unet_prefixes(config)
    return {"model.diffusion_model." + _rename(k, table, UNET_RESNET)[0]: v for k, v in state.items()}


def vae_prefixes(config: dict) -> list[tuple[str, str, bool]]:
    n, per = len(config["block_out_channels"]), int(config["layers_per_block"])
    out = []
    for side in ("encoder", "decoder"):
        out += [(f"{side}.conv_in.", f"{side}.conv_in.", False), (f"{side}.conv_out.", f"{side}.conv_out.", False),
                (f"{side}.conv_norm_out.", f"{side}.norm_out.", False),
                (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", False)]
        out += [(f"{side}.mid_block.resnets.{k}.", f"{side}.mid.block_{k + 1}.", True) for k in range(2)]
    for i in range(n):
        out += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", True) for j in range(per)]
        # the decoder's up levels are numbered in reverse in the LDM layout
        out += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.", True)
                for j in range(per + 1)]
        if i < n - 1:
            out.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", False))
            out.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.", False))
    return out + [("quant_conv.", "quant_conv.", False), ("post_quant_conv.", "post_quant_conv.", False)]


VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> ``first_stage_model.*`` (mid attention linears as 1x1 convs)."""
    table, out = vae_prefixes(config), {}
    for k, v in state.items():
        name, _ = _rename(k, table, {"conv_shortcut": "nin_shortcut"})
        if ".mid.attn_1." in name:
            head, _, tail = name.partition(".mid.attn_1.")
            for d, o in VAE_ATTENTION.items():
                if tail.startswith(d):
                    tail = o + tail[len(d):]
            name = f"{head}.mid.attn_1.{tail}"
            if v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)
        out["first_stage_model." + name] = v
    return out


def text_to_ldm(state: dict[str, torch.Tensor], nested: bool = True) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> ``cond_stage_model.transformer.text_model.*`` as real SD 1.x files
    (``nested=False``: the older layout without ``text_model.``), position_ids buffer included."""
    own = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}
    own.setdefault("embeddings.position_ids", torch.arange(own["embeddings.position_embedding.weight"].shape[0])[None])
    head = "cond_stage_model.transformer." + ("text_model." if nested else "")
    return {head + k: v for k, v in own.items()}


def ema_of(ldm_unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.X.Y`` -> ``model_ema.diffusion_modelXY`` (ldm/modules/ema.py's buffer names)."""
    out = {"model_ema." + k[len("model."):].replace(".", ""): v for k, v in ldm_unet.items()}
    return dict(out, **{"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)})


def to_ldm_file(text: torch.nn.Module, vae: torch.nn.Module, unet: torch.nn.Module, dtype: torch.dtype,
                ema_unet: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """One flat original-LDM state dict of the three modules in ``dtype`` (int buffers kept), with schedule
    buffers and, given ``ema_unet``, its weights as the EMA copy."""
    state = {**unet_to_ldm(unet.state_dict(), dict(unet.config)), **vae_to_ldm(vae.state_dict(), dict(vae.config)),
             **text_to_ldm(text.state_dict())}
    if ema_unet is not None:
        state.update(ema_of(unet_to_ldm(ema_unet.state_dict(), dict(ema_unet.config))))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    state.update(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, 0))
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}
