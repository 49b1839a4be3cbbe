"""Component ``unet_attn``: one UNet step that also returns Ref-Diff's cross-attention maps.

Inputs: ``sample`` B x 4 x h x w float32 (noisy latent), ``timestep`` B float32 (DDPM step index, 0..999, as a
float), ``encoder_hidden_states`` B x 77 x D float32 (``sd_text`` output). Outputs: ``noise_pred`` B x 4 x h x w
float32 (epsilon); ``attn`` B x (q_h*q_w) x 77 float32: softmax(QK^T/sqrt(d)) of the cross-attention layers at
the chosen query grids, averaged over heads and layers (other grids bilinearly resized to q_h x q_w), each row
summing to 1 over the 77 tokens (the ``paper`` preset); and, in bundles of :func:`with_logits` (every
``edgeseg export refdiff`` bundle), ``attn_logits`` B x L x (g_h*g_w) x 77 float32: the pre-softmax logits
QK^T/sqrt(d) (no mask), averaged over heads, of each of the L cross-attention layers whose query grid is latent/4
(the released Ref-Diff's image/32), in forward order (the ``released`` preset combines them per layer call). The
runtime runs uncond + cond together (B = 2N). Both maps stay FP32 in FP16 builds (``fp32_outputs``) and their
attention nodes FP32 in INT8 builds (``int8_exclude``).

SD 1.5's UNet (~3.4 GB of weights) is over protobuf's 2 GB: ``export_component`` writes it as ``unet_attn.onnx``
plus one external-data file ``unet_attn.onnx.data`` (``edgeseg.export.build.external``), listed with its sha256
in the manifest's ``external_data`` and checked by the runtime on load; the toy UNet stays one file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "unet_attn"
LOGITS_DOWNSCALE = 4  # the logits grid: latent / 4 (released Ref-Diff: attn_w = image side // 32, VAE x8)


def make_wrapper(unet: nn.Module, latent_hw: tuple[int, int], resolutions: list[int] | tuple[int, ...],
                 grid: tuple[int, int] | None = None, query_downscale: int = 4,
                 logits_downscale: int | None = None) -> nn.Module:
    """The export wrapper (:class:`edgeseg.train.attn_capture.AttentionCapture`): installs capture processors on
    the UNet's cross-attention layers at ``resolutions`` and maps ``(sample, timestep, states)`` to
    ``(noise_pred, attn)``; with ``logits_downscale`` (e.g. :data:`LOGITS_DOWNSCALE`) also ``attn_logits`` of the
    layers whose query grid is latent h / ``logits_downscale``."""
    from edgeseg.train.attn_capture import AttentionCapture

    at = None if logits_downscale is None else int(latent_hw[0]) // int(logits_downscale)
    return AttentionCapture(unet, latent_hw, resolutions, grid=grid, query_downscale=query_downscale,
                            logits_resolution=at)


def spec(latent_shape: tuple[int, int, int], grid: tuple[int, int], hidden_dim: int, context_length: int = 77,
         max_batch: int = 16, opset: int = 17, logits_layers: int = 0,
         logits_grid: tuple[int, int] | None = None) -> ComponentSpec:
    """I/O of ``unet_attn``; batch dynamic in [1, max_batch], opt 2 (uncond + cond). ``logits_layers`` > 0 (with
    ``logits_grid``): the ``attn_logits`` output of that many layers is declared too."""
    c, h, w = latent_shape
    outputs = [TensorSpec("noise_pred", "float32", ("batch", c, h, w)),
               TensorSpec("attn", "float32", ("batch", grid[0] * grid[1], context_length))]
    if logits_layers:
        if logits_grid is None:
            raise ValueError("unet_attn.spec: logits_layers needs logits_grid (the layers' query grid)")
        outputs.append(TensorSpec("attn_logits", "float32", ("batch", int(logits_layers),
                                                             int(logits_grid[0]) * int(logits_grid[1]),
                                                             context_length)))
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "sample", (c, h, w), max_batch, opt_n=2),
                dynamic_input("batch", "timestep", (), max_batch, opt_n=2),
                dynamic_input("batch", "encoder_hidden_states", (context_length, hidden_dim), max_batch, opt_n=2)),
        outputs=tuple(outputs),
        opset=opset,
        description="SD UNet epsilon + cross-attention probs (mean over heads/layers) on a fixed query grid" +
                    (" + per-layer head-mean pre-softmax logits at latent/4" if logits_layers else ""),
        fp32_outputs=("attn", "attn_logits") if logits_layers else ("attn",),
        int8_exclude=(r"attn2", r"Softmax"),
    )


def with_logits(wrapper: nn.Module, component_spec: ComponentSpec, attention: dict[str, Any],
                downscale: int = LOGITS_DOWNSCALE) -> tuple[tuple[nn.Module, ComponentSpec], dict[str, Any]]:
    """The ``unet_attn`` component of ``wrapper`` (an ``AttentionCapture`` without logits, as
    :func:`edgeseg.export.refdiff_sd.sd_components` builds it) rebuilt to output ``attn_logits`` too, its spec
    and the manifest's ``attention`` entry with ``logits``: ``grid`` [g_h, g_w], ``resolution`` g_h, ``layers``
    (names, forward order, = L), ``downscale``. The capture processors are reinstalled on the same UNet."""
    from edgeseg.train.attn_capture import AttentionCapture

    new = AttentionCapture(wrapper.unet, wrapper.latent_hw, wrapper.resolutions, grid=wrapper.grid,
                           context_len=wrapper.context_len, logits_resolution=wrapper.latent_hw[0] // int(downscale),
                           grids=dict(wrapper.grids))
    states = component_spec.input("encoder_hidden_states")
    s = spec(tuple(component_spec.input("sample").shape[1:]), tuple(new.grid), int(states.shape[2]),
             int(states.shape[1]), int(states.max[0]), component_spec.opset,
             logits_layers=len(new.logits_layer_names), logits_grid=new.logits_grid)
    info = dict(attention, logits={"grid": list(new.logits_grid), "resolution": new.logits_resolution,
                                   "downscale": int(downscale), "layers": list(new.logits_layer_names)})
    return (new, s), info


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(sample, timestep, encoder_hidden_states)``: normal latents, timesteps in [1, 1000), normal states."""
    g = torch.Generator().manual_seed(seed)
    shapes = [list(getattr(t, which)) for t in spec.inputs]
    n = batch or shapes[0][0]
    sample = torch.randn([n, *shapes[0][1:]], generator=g)
    timestep = torch.randint(1, 1000, (n,), generator=g).float()
    states = torch.randn([n, *shapes[2][1:]], generator=g)
    return sample, timestep, states
