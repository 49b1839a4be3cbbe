"""Component ``unet_attn``: one UNet step that also returns Ref-Diff's cross-attention map.

Inputs: ``sample`` B x 4 x h x w float32 (noisy latent), ``timestep`` B float32 (DDPM step index, 0..999, as a
float), ``encoder_hidden_states`` B x 77 x D float32 (``sd_text`` output). Outputs: ``noise_pred`` B x 4 x h x w
float32 (epsilon) and ``attn`` B x (q_h*q_w) x 77 float32: softmax(QK^T/sqrt(d)) of the cross-attention layers at
the chosen query grids, averaged over heads and layers (other grids bilinearly resized to q_h x q_w); each row
sums to 1 over the 77 tokens. The runtime runs uncond + cond together (B = 2N). Keep ``attn`` in FP32 builds.

SD 1.5's UNet (~3.4 GB of weights) is over protobuf's 2 GB: ``export_component`` writes it as ``unet_attn.onnx``
plus one external-data file ``unet_attn.onnx.data`` (``edgeseg.export.build.external``), listed with its sha256
in the manifest's ``external_data`` and checked by the runtime on load; the toy UNet stays one file.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "unet_attn"


def make_wrapper(unet: nn.Module, latent_hw: tuple[int, int], resolutions: list[int] | tuple[int, ...],
                 grid: tuple[int, int] | None = None, query_downscale: int = 4) -> nn.Module:
    """The export wrapper (:class:`edgeseg.train.attn_capture.AttentionCapture`): installs capture processors on
    the UNet's cross-attention layers at ``resolutions`` and maps ``(sample, timestep, states)`` to
    ``(noise_pred, attn)``."""
    from edgeseg.train.attn_capture import AttentionCapture

    return AttentionCapture(unet, latent_hw, resolutions, grid=grid, query_downscale=query_downscale)


def spec(latent_shape: tuple[int, int, int], grid: tuple[int, int], hidden_dim: int, context_length: int = 77,
         max_batch: int = 16, opset: int = 17) -> ComponentSpec:
    """I/O of ``unet_attn``; batch dynamic in [1, max_batch], opt 2 (uncond + cond)."""
    c, h, w = latent_shape
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "sample", (c, h, w), max_batch, opt_n=2),
                dynamic_input("batch", "timestep", (), max_batch, opt_n=2),
                dynamic_input("batch", "encoder_hidden_states", (context_length, hidden_dim), max_batch, opt_n=2)),
        outputs=(TensorSpec("noise_pred", "float32", ("batch", c, h, w)),
                 TensorSpec("attn", "float32", ("batch", grid[0] * grid[1], context_length))),
        opset=opset,
        description="SD UNet epsilon + cross-attention probs (mean over heads/layers) on a fixed query grid",
        fp32_outputs=("attn",),
        int8_exclude=(r"attn2", r"Softmax"),
    )


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
