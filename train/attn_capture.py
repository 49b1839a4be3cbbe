"""Cross-attention capture for a diffusers ``UNet2DConditionModel`` (Ref-Diff's localization maps).

:class:`CaptureProcessor` computes ``scores = Q K^T / sqrt(d)`` and ``probs = softmax(scores)`` explicitly (so the
maps exist even where a fused SDPA processor would run) and keeps, averaged over heads, the probabilities
``B x (h*w) x T`` and/or the pre-softmax logits ``B x (h*w) x T`` (before any attention mask).
:class:`AttentionCapture` installs one on every cross-attention layer whose query grid is in the chosen
resolutions, or is the logits grid, and returns ``(noise_pred, attn)`` or ``(noise_pred, attn, attn_logits)``:
``attn`` the mean of the probabilities over layers on a target grid (layers at other grids bilinearly resized
with static sizes, the paper preset), ``attn_logits`` ``B x L x (q_h*q_w) x T`` the per-layer logits of the L
layers at the logits grid (the released preset: kodenii/Ref-Diff ``ldm/modules/attention.py`` reads the scores
before the softmax). Per-layer grids come from one eager pass at construction, so the traced graph holds no shape
arithmetic (export-notes traps 5, 6, 7).

:func:`reference_attention` and :func:`reference_logits` compute the same tensors with diffusers' own
``AttnProcessor`` / ``Attention.get_attention_scores`` (the logits written from the released ``CrossAttention``:
``einsum(q, k) * scale`` on the ``(b h) n d`` layout), for parity tests; both read the scores through the context
manager :func:`captured_scores`, which restores the UNet's processors on leaving, an exception included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class CaptureProcessor:
    """Attention processor that stores head-averaged attention probabilities (``B x N x T``) in ``self.probs``
    (``keep_probs``) and head-averaged pre-softmax logits ``q.k * scale`` (``B x N x T`` float32, before any
    attention mask) in ``self.logits`` (``keep_logits``)."""

    def __init__(self, keep_probs: bool = True, keep_logits: bool = False) -> None:
        self.keep_probs, self.keep_logits = bool(keep_probs), bool(keep_logits)
        self.probs: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, n = hidden_states.shape[0], hidden_states.shape[1]
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        d = q.shape[-1] // heads
        q = q.view(batch, n, heads, d).transpose(1, 2)  # B x heads x N x d
        k = k.view(batch, -1, heads, d).transpose(1, 2)
        v = v.view(batch, -1, heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # B x heads x N x T
        if self.keep_logits:
            self.logits = scores.float().mean(dim=1)  # B x N x T, before the mask (as released)
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
            scores = scores + mask.view(batch, heads, -1, mask.shape[-1])
        probs = scores.float().softmax(dim=-1)
        if self.keep_probs:
            self.probs = probs.mean(dim=1)  # B x N x T
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(batch, n, heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_layers(unet: nn.Module) -> list[str]:
    """Names of the cross-attention (``attn2``) modules of a diffusers UNet, in forward order."""
    return [n for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "set_processor")]


@torch.no_grad()
def layer_grids(unet: nn.Module, latent_hw: tuple[int, int], context_dim: int, context_len: int = 77
                ) -> dict[str, tuple[int, int]]:
    """One eager pass: each cross-attention layer -> its query grid ``(h, w)`` for latents of ``latent_hw``."""
    seq: dict[str, int] = {}
    hooks = []
    for name in cross_attention_layers(unet):
        mod = unet.get_submodule(name)
        hooks.append(mod.register_forward_pre_hook(
            lambda m, args, kw, name=name: seq.__setitem__(name, int((args[0] if args else kw["hidden_states"])
                                                                     .shape[1])), with_kwargs=True))
    try:
        p = next(unet.parameters())
        unet(torch.zeros(1, unet.config.in_channels, *latent_hw, dtype=p.dtype),
             torch.tensor([1.0]), torch.zeros(1, context_len, context_dim, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    grids = {}
    for name, n in seq.items():
        h, w = latent_hw
        while h * w > n and h > 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != n:
            raise ValueError(f"cannot place {n} queries of layer {name} on a grid from latent {latent_hw}")
        grids[name] = (h, w)
    return grids


def _combine_dynamic(maps: list[tuple[torch.Tensor, int]], latent_hw: tuple[Any, Any], grid: tuple[int, int]
                     ) -> torch.Tensor:
    """:func:`_combine` for latents of any multiple of the UNet's downscale (dynamic-size bundles): each B x N x T
    map's grid is ``(H // r, W // r)`` of the latent's (traced) ``latent_hw`` and the layer's static ratio ``r``,
    and every layer is bilinearly resized to the fixed ``grid`` (an identity where the sizes agree)."""
    acc = None
    for probs, r in maps:
        b, t = probs.shape[0], probs.shape[-1]
        m = probs.transpose(1, 2).reshape(b, t, latent_hw[0] // r, latent_hw[1] // r)
        m = F.interpolate(m, size=(int(grid[0]), int(grid[1])), mode="bilinear", align_corners=False)
        m = m.reshape(b, t, grid[0] * grid[1]).transpose(1, 2)
        acc = m if acc is None else acc + m
    return acc / len(maps)


def _combine(maps: list[tuple[torch.Tensor, tuple[int, int]]], grid: tuple[int, int]) -> torch.Tensor:
    """Mean over layers of B x (h*w) x T maps, each resized (bilinear, static sizes) to ``grid``."""
    acc = None
    for probs, (h, w) in maps:
        m = probs
        if (h, w) != tuple(grid):
            t = probs.shape[-1]
            m = probs.transpose(1, 2).reshape(probs.shape[0], t, h, w)
            m = F.interpolate(m, size=(int(grid[0]), int(grid[1])), mode="bilinear", align_corners=False)
            m = m.reshape(probs.shape[0], t, grid[0] * grid[1]).transpose(1, 2)
        acc = m if acc is None else acc + m
    return acc / len(maps)


class AttentionCapture(nn.Module):
    """Export wrapper: ``(sample B x 4 x h x w, timestep B float32, encoder_hidden_states B x T x D)`` ->
    ``(noise_pred B x 4 x h x w, attn B x (q_h*q_w) x T float32)``; ``attn`` rows sum to 1.

    ``logits_resolution``: a query-grid height (e.g. latent h / 4, the released Ref-Diff's image/32); then a third
    output ``attn_logits`` B x L x (g_h*g_w) x T float32, the head-mean pre-softmax logits of each of the L
    cross-attention layers at that grid, in forward order (:attr:`logits_layer_names`). None: two outputs.

    ``dynamic``: the latent may be any multiple of the UNet's downscale, not only ``latent_hw`` (dynamic-size
    bundles, ``sd_dynamic``): each layer's grid is then read from the sample's traced size and its ratio to
    ``latent_hw`` (:attr:`layer_ratios`), so ``attn`` stays on the fixed ``grid`` and ``attn_logits`` gets
    (H / 4) * (W / 4) queries of that latent."""

    def __init__(self, unet: nn.Module, latent_hw: tuple[int, int], resolutions: list[int] | tuple[int, ...],
                 grid: tuple[int, int] | None = None, query_downscale: int = 2, context_len: int = 77,
                 logits_resolution: int | None = None,
                 grids: dict[str, tuple[int, int]] | None = None, dynamic: bool = False):
        super().__init__()
        self.unet = unet
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.context_len = int(context_len)
        self.grid = tuple(grid) if grid is not None else (self.latent_hw[0] // query_downscale,
                                                          self.latent_hw[1] // query_downscale)
        if grids is None:  # ``grids``: :func:`layer_grids` of this UNet and latent, when already known
            grids = layer_grids(unet, self.latent_hw, unet.config.cross_attention_dim, context_len)
        self.grids = tuple(grids.items())  # (name, (h, w)) of every cross-attention layer, forward order
        have = sorted({g[0] for g in grids.values()})
        self.resolutions = tuple(sorted({int(r) for r in resolutions}))
        chosen = [(n, g) for n, g in grids.items() if g[0] in self.resolutions]
        if not chosen:
            raise ValueError(f"no cross-attention layer has a query grid in {list(self.resolutions)} for latent "
                             f"{self.latent_hw}; the UNet's grids are {have}: pick resolutions among them")
        self.layer_names = tuple(n for n, _ in chosen)  # a tuple of names: no dict for export to copy
        self.layer_hw = tuple(g for _, g in chosen)
        self.dynamic = bool(dynamic)
        self.layer_ratios = tuple(self.latent_hw[0] // g[0] for g in self.layer_hw)  # latent / layer grid
        bad = [n for n, g, r in zip(self.layer_names, self.layer_hw, self.layer_ratios)
               if (g[0] * r, g[1] * r) != self.latent_hw]
        if self.dynamic and bad:
            raise ValueError(f"dynamic AttentionCapture: the grids of {bad} do not divide latent {self.latent_hw} "
                             f"evenly; pick a latent size that is a multiple of the UNet's downscale")
        self.logits_resolution = None if logits_resolution is None else int(logits_resolution)
        at = [(n, g) for n, g in grids.items() if g[0] == self.logits_resolution]
        if self.logits_resolution is not None and not at:
            raise ValueError(f"no cross-attention layer has the logits query grid {self.logits_resolution} for "
                             f"latent {self.latent_hw}; the UNet's grids are {have}: pick logits_resolution among "
                             f"them")
        self.logits_layer_names = tuple(n for n, _ in at)
        self.logits_grid: tuple[int, int] | None = at[0][1] if at else None
        for name in dict.fromkeys(self.layer_names + self.logits_layer_names):  # per-module processors (trap 7)
            unet.get_submodule(name).set_processor(CaptureProcessor(keep_probs=name in self.layer_names,
                                                                    keep_logits=name in self.logits_layer_names))

    def _processor(self, name: str) -> CaptureProcessor:
        proc = self.unet.get_submodule(name).processor
        if not isinstance(proc, CaptureProcessor):
            raise RuntimeError(f"the attention processor of {name} was replaced by {type(proc).__name__} after "
                               f"AttentionCapture was built (set_attn_processor?); build AttentionCapture again")
        return proc

    def captured(self) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """The probability maps of the last forward, looked up through the modules at call time (trap 5)."""
        out = []
        for name, hw in zip(self.layer_names, self.layer_hw):
            proc = self._processor(name)
            if proc.probs is None:
                raise RuntimeError(f"layer {name} captured no attention in the last forward; it did not run (or "
                                   f"its processor was rebuilt without probabilities): build AttentionCapture again")
            out.append((proc.probs, hw))
        return out

    def captured_logits(self) -> torch.Tensor:
        """B x L x (g_h*g_w) x T: the logits of the last forward at the logits grid, one row per layer."""
        maps = []
        for name in self.logits_layer_names:
            proc = self._processor(name)
            if proc.logits is None:
                raise RuntimeError(f"layer {name} captured no attention logits in the last forward; it did not run "
                                   f"(or its processor was rebuilt without logits): build AttentionCapture again")
            maps.append(proc.logits)
        return torch.stack(maps, dim=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        for name in dict.fromkeys(self.layer_names + self.logits_layer_names):
            proc = self.unet.get_submodule(name).processor
            if isinstance(proc, CaptureProcessor):
                proc.probs = proc.logits = None
        noise = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        if self.dynamic:
            attn = _combine_dynamic([(p, r) for (p, _), r in zip(self.captured(), self.layer_ratios)],
                                    (sample.shape[-2], sample.shape[-1]), self.grid)
        else:
            attn = _combine(self.captured(), self.grid)
        if self.logits_resolution is None:
            return noise, attn
        return noise, attn, self.captured_logits()


ScoreReader = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None, Callable[..., torch.Tensor]],
                       tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def captured_scores(unet: nn.Module, names: list[str], read: ScoreReader) -> Iterator[dict[str, torch.Tensor]]:
    """Run the layers ``names`` of ``unet`` through diffusers' own ``AttnProcessor`` with their
    ``get_attention_scores`` wrapped: ``read(mod, q, k, mask, orig)`` gets the ``(b h) x N x d`` query / key
    (``orig`` the layer's own ``get_attention_scores``) and returns ``(kept, probs)``: ``kept`` a B x N x T map
    stored under the layer's name in the yielded dict, ``probs`` what the layer goes on with. On leaving (an
    exception included) every layer gets its processor back and loses the wrapper."""
    from diffusers.models.attention_processor import AttnProcessor

    saved = {n: unet.get_submodule(n).processor for n in names}
    got: dict[str, torch.Tensor] = {}
    try:
        for name in names:
            mod = unet.get_submodule(name)
            mod.set_processor(AttnProcessor())
            orig = type(mod).get_attention_scores.__get__(mod)

            def scores(q, k, mask=None, name=name, orig=orig, mod=mod):
                got[name], probs = read(mod, q, k, mask, orig)
                return probs
            mod.get_attention_scores = scores
        yield got
    finally:
        for name, proc in saved.items():
            mod = unet.get_submodule(name)
            mod.__dict__.pop("get_attention_scores", None)
            mod.set_processor(proc)


def _head_mean(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b h) x N x T`` -> the head mean B x N x T."""
    return x.view(-1, heads, x.shape[1], x.shape[2]).mean(1)


@torch.no_grad()
def reference_attention(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor,
                        resolutions: list[int] | tuple[int, ...], grid: tuple[int, int]) -> torch.Tensor:
    """The same B x (q_h*q_w) x T map as :class:`AttentionCapture`, computed with diffusers' own ``AttnProcessor``
    (``Attention.get_attention_scores``). Processors of the UNet are restored afterwards."""
    latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
    grids = layer_grids(unet, latent_hw, unet.config.cross_attention_dim, states.shape[1])
    chosen = [(n, g) for n, g in grids.items() if g[0] in set(int(r) for r in resolutions)]

    def read(mod, q, k, mask, orig):
        p = orig(q, k, mask)
        return _head_mean(p, mod.heads), p
    with captured_scores(unet, [n for n, _ in chosen], read) as got:
        unet(sample, timestep, states)
    return _combine([(got[n], g) for n, g in chosen], grid)


@torch.no_grad()
def reference_logits(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor,
                     resolution: int) -> torch.Tensor:
    """B x L x (g_h*g_w) x T float32: the head-mean pre-softmax cross-attention logits of the L layers whose query
    grid height is ``resolution``, as the released ``CrossAttention.forward`` forms them (``q, k`` as
    ``(b h) n d``, ``einsum('b i d, b j d -> b i j') * scale``, before the mask; its ``sim[0:mid].mean(0)`` is the
    head mean of the first batch half), read inside diffusers' own ``AttnProcessor`` (its ``head_to_batch_dim``
    layout, through ``Attention.get_attention_scores``). Processors of the UNet are restored afterwards."""
    latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
    grids = layer_grids(unet, latent_hw, unet.config.cross_attention_dim, states.shape[1])
    chosen = [n for n, g in grids.items() if g[0] == int(resolution)]

    def read(mod, q, k, mask, orig):
        sim = torch.einsum("bid,bjd->bij", q.float(), k.float()) * mod.scale  # (b h) x N x T
        return _head_mean(sim, mod.heads), orig(q, k, mask)
    with captured_scores(unet, chosen, read) as got:
        unet(sample, timestep, states)
    missing = [n for n in chosen if n not in got]
    if not chosen or missing:
        raise RuntimeError(f"reference_logits: layers {missing or chosen} at grid {resolution} produced no logits")
    return torch.stack([got[n] for n in chosen], dim=1)
