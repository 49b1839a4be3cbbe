"""Component ``vae_encoder``: image B x 3 x H x W float32 in [-1, 1] -> latent B x 4 x H/f x W/f float32.

With ``sd_dynamic`` (:func:`dynamic_spec`) H and W are dynamic (the released non-padded geometry).

The latent is the *mean* of the VAE posterior times the scaling factor (0.18215 for SD 1.5), which is what the
UNet was trained on; Ref-Diff then adds noise for a few DDIM steps. ``f`` is the VAE downscale (8 for SD 1.5,
4 for the toy model).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "vae_encoder"


class VAEEncoderWrapper(nn.Module):
    """Export-only: ``AutoencoderKL`` encoder -> quant conv -> posterior mean * scaling factor."""

    def __init__(self, vae: nn.Module, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image B x 3 x H x W float32 in [-1, 1] -> latent B x C x h x w float32."""
        h = self.vae.encoder(image)
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean = h[:, : h.shape[1] // 2]
        return mean * self.scaling_factor


def spec(image_size: tuple[int, int], latent_shape: tuple[int, int, int], max_batch: int = 8) -> ComponentSpec:
    """``image`` B x 3 x H x W (B in [1, max_batch], opt 1) -> ``latent`` B x C x h x w."""
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "image", (3, *image_size), max_batch, opt_n=1),),
        outputs=(TensorSpec("latent", "float32", ("batch", *latent_shape)),),
        description="SD VAE encoder: posterior mean x scaling factor; input RGB in [-1, 1]",
    )


def dynamic_spec(image_size: tuple[int, int], latent_shape: tuple[int, int, int], min_size: int,
                 max_batch: int = 8) -> ComponentSpec:
    """The opt-in dynamic-size variant (``sd_dynamic`` configs): ``image`` B x 3 x height x width with height and
    width each in [``min_size``, the opt = max ``image_size``] (the released non-padded resize never exceeds the
    diffusion size), batch in [1, max_batch] opt 1 -> ``latent`` B x C x h x w (h = height / f, w = width / f).
    ``latent``'s axes are named after the input axes they follow: ``height/f``, ``width/f``
    (:func:`edgeseg.runtime.manifest.derived_axis`)."""
    h, w = (int(v) for v in image_size)
    c, f = int(latent_shape[0]), h // int(latent_shape[1])  # the VAE's downscale (8 for SD)
    if min_size < 1 or min_size > min(h, w):
        raise ValueError(f"vae_encoder.dynamic_spec: min_size {min_size} must lie in [1, {min(h, w)}]")
    image = TensorSpec("image", "float32", ("batch", 3, "height", "width"), (1, 3, min_size, min_size),
                       (1, 3, h, w), (max_batch, 3, h, w))
    return ComponentSpec(
        NAME,
        inputs=(image,),
        outputs=(TensorSpec("latent", "float32", ("batch", c, f"height/{f}", f"width/{f}")),),
        description="SD VAE encoder: posterior mean x scaling factor; input RGB in [-1, 1]; dynamic H x W",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(image,)`` uniform in [-1, 1] at the spec's min/opt/max batch (or ``batch``)."""
    shape = list(getattr(spec.inputs[0], which))
    shape[0] = batch or shape[0]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1,)
