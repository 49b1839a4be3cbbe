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

Dynamic-size bundles (``sd_dynamic`` configs, :func:`with_dynamic_size`): ``sample`` / ``noise_pred`` take any
latent H x W in the profile (multiples of the UNet's downscale) and ``attn_logits`` has (H/4)*(W/4) queries of
that latent; ``attn`` stays on its fixed grid (the paper preset reads it only at the opt size).

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


def with_dynamic_size(wrapper: nn.Module, component_spec: ComponentSpec, min_latent: int
                      ) -> tuple[nn.Module, ComponentSpec]:
    """The opt-in dynamic-size ``unet_attn`` (``sd_dynamic`` configs) of a :func:`with_logits` component: the
    wrapper rebuilt with ``dynamic=True`` on the same UNet and its spec with ``sample`` B x C x height x width
    (latent cells, each in [``min_latent``, the opt = max latent]), ``noise_pred`` alike and ``attn_logits``
    B x L x Q x 77 with Q = (height / 4) * (width / 4). ``attn`` stays on its fixed grid (each layer bilinearly
    resized to it from the traced size). Q is declared ``height/4*width/4`` (an output axis derived from the input
    axes: :func:`edgeseg.runtime.manifest.derived_axis`)."""
    from edgeseg.train.attn_capture import AttentionCapture

    if not wrapper.logits_layer_names:
        raise ValueError("unet_attn.with_dynamic_size needs the attn_logits wrapper of with_logits")
    new = AttentionCapture(wrapper.unet, wrapper.latent_hw, wrapper.resolutions, grid=wrapper.grid,
                           context_len=wrapper.context_len, logits_resolution=wrapper.logits_resolution,
                           grids=dict(wrapper.grids), dynamic=True)
    old = {t.name: t for t in component_spec.inputs + component_spec.outputs}
    sample = old["sample"]
    n_max, c, h, w = sample.max
    if not 1 <= min_latent <= min(h, w):
        raise ValueError(f"unet_attn.with_dynamic_size: min_latent {min_latent} must lie in [1, {min(h, w)}]")
    hw = ("batch", c, "height", "width")
    r = h // int(wrapper.logits_resolution)  # latent / logits grid (LOGITS_DOWNSCALE)
    inputs = (TensorSpec("sample", "float32", hw, (1, c, min_latent, min_latent), (sample.opt[0], c, h, w),
                         (n_max, c, h, w)), old["timestep"], old["encoder_hidden_states"])
    logits = old["attn_logits"]
    outputs = (TensorSpec("noise_pred", "float32", hw), old["attn"],
               TensorSpec("attn_logits", "float32", ("batch", logits.shape[1], f"height/{r}*width/{r}",
                                                     logits.shape[3])))
    s = ComponentSpec(NAME, inputs=inputs, outputs=outputs, opset=component_spec.opset,
                      description=component_spec.description + "; dynamic latent H x W",
                      fp32_outputs=component_spec.fp32_outputs, int8_exclude=component_spec.int8_exclude)
    return new, s


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
