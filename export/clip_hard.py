"""Component ``clip_hard``: Ref-Diff's released hard branch, the CLIP image tower on proposal crops at their own
aspect ratio (kodenii/Ref-Diff ``model/segmenter.py`` ``get_cliphard``).

Input
- ``crops``        B x 3 x height x width float32, normalized RGB (B crops sharing one size; H and W dynamic)

Output (unit norm along D)
- ``hard_embeds``  B x D: one embedding per crop

The released code resizes each crop's shortest side to 224 (``T.Resize(224)``, aspect kept) and runs
``get_mask_token(crop, num_tokens=1)[:, 0:1]``: with one class token and no attention mask that is exactly the
plain CLIP forward (``prepare_multi_class_tokens(remove_cls=True)`` swaps the class token for one copy of itself),
except that the position embeddings are ``interpolate_pos_encoding``'s for the crop's grid: the checkpoint's
``S x S`` grid as is when the crop is square with ``S^2`` patches, else bicubic (A = -0.75, ``align_corners=False``)
with the DINO ``+ 0.1`` scale factors ``(gh + 0.1) / S`` -- computed in-graph by the same weight matrices as
``clip_masked``'s released soft branch (:meth:`ClipMaskedWrapper.native_position`). Every token attends to every
token (the patches see the class token, unlike the soft branch). Readout: ``ln_post(token 0) @ proj``,
L2-normalized. The conv floors the grid (``gh = H // stride``), as released.

Avg-pool towers (``pool_type == "avg"``, e.g. the ToyWorld ``toy-tiny`` CLIP) have no class-token readout; edgeseg's
analogue runs the same plain sequence (class token included, interpolated position embeddings) and reads it with
the tower's own pooling (open_clip ``_pool``: ``ln_post`` then the mean of the patch tokens, or the mean then
``ln_post`` when ``final_ln_after_pool``), ``@ proj``, L2-normalized: at the tower's own square size this is
``encode_image(crop, normalize=True)``, as for class-token towers.

Size range (:func:`edgeseg.export.clip_masked.native_range`): min ``2 x stride`` per side, opt the tower's image
size, max 6 x the image size floored to the stride (1344 px for 224-px CLIPs). B is in [1, ``max_crops``] (opt 1):
crops of different sizes are separate calls, and few crops of one image share a size. A separate component, not
a ``clip_masked`` output, because ONNX Runtime runs a whole graph whatever outputs are asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.export.clip_masked import ClipMaskedWrapper, native_range
from edgeseg.export.spec import ComponentSpec, TensorSpec

NAME = "clip_hard"
MAX_CROPS = 4  # crops per call; the profile's max corner is max_crops x 3 x 1344 x 1344 for a 224-px ViT


class ClipHardWrapper(ClipMaskedWrapper):
    """Export-only wrapper around an open_clip ``VisionTransformer`` (``clip.visual``): ``forward(crops B x 3 x H x
    W) -> hard_embeds B x D`` unit norm. Reuses :class:`ClipMaskedWrapper`'s checks, hand-written blocks (no
    frozen sequence length in the legacy exporter) and in-graph position interpolation; no data-dependent control
    flow."""

    COMPONENT = NAME
    POSITION_USER = "released hard branch"

    def embeds(self, crops: torch.Tensor) -> torch.Tensor:
        """crops B x 3 x H x W (one size) -> B x D, unnormalized: the plain forward at the crop's own grid."""
        v = self.visual
        feat = v.conv1(crops)  # B x C x gh x gw
        patches = feat.flatten(2).transpose(1, 2) + self.native_position(feat, crops)[None]  # B x P x C
        cls = v.class_embedding + v.positional_embedding[0]  # C
        x = torch.cat([torch.zeros_like(patches[:, :1]) + cls, patches], dim=1)  # B x (1 + P) x C
        x = v.ln_pre(v.patch_dropout(x))
        for blk in v.transformer.resblocks:
            x = self._block(blk, x)
        return self._proj(v._pool(x)[0])

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.normalize(self.embeds(crops), dim=-1)


def spec(image_size: tuple[int, int], stride: tuple[int, int], embed_dim: int, max_crops: int = MAX_CROPS,
         max_side: int | None = None) -> ComponentSpec:
    """crops ``crops`` x 3 x height x width with crops in [1, max_crops] (opt 1) and the sides over
    :func:`native_range` (``max_side``: its ``native_max_side``)."""
    if max_crops < 1:
        raise ValueError(f"max_crops must be >= 1, got {max_crops}")
    lo, opt, hi = native_range(image_size, stride, max_side)
    return ComponentSpec(
        NAME,
        inputs=(TensorSpec("crops", "float32", ("crops", 3, "height", "width"), (1, 3, *lo), (1, 3, *opt),
                           (max_crops, 3, *hi)),),
        outputs=(TensorSpec("hard_embeds", "float32", ("crops", embed_dim)),),
        description="CLIP image tower on B crops of one size at their own aspect ratio (released hard branch: "
                    "position embeddings interpolated for the crop's grid), L2-normalized",
    )


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None, seed: int = 0,
                   hw: tuple[int, int] | None = None) -> tuple[torch.Tensor]:
    """Random crops: ``batch`` (or the spec's ``which`` count) x 3 x ``hw`` (or the spec's ``which`` size)."""
    if which not in ("min", "opt", "max"):
        raise ValueError(f"which must be 'min', 'opt' or 'max', got {which!r}")
    t = spec.inputs[0]
    n = int(batch) if batch is not None else getattr(t, which)[0]
    if n < 1:
        raise ValueError(f"batch (number of crops) must be >= 1, got {n}")
    h, w = hw if hw is not None else getattr(t, which)[2:]
    return (torch.randn((n, 3, int(h), int(w)), generator=torch.Generator().manual_seed(seed)),)


def refdiff_hard_component(visual: nn.Module, preprocessing: dict, max_crops: int = MAX_CROPS
                           ) -> tuple[tuple[nn.Module, ComponentSpec], dict]:
    """``(wrapper, spec)`` of ``clip_hard`` for a CLIP tower and its manifest preprocessing, and the
    ``method_config["clip_hard"]`` facts the runtime reads: stride, short_side (the released ``T.Resize``
    target: the tower's image size, 224 for ViT-B/16), readout, max_crops and the size range."""
    wrapper = ClipHardWrapper(visual)
    size = tuple(int(v) for v in preprocessing["image_size"])
    s = spec(size, wrapper.stride, int(visual.output_dim), max_crops)
    t = s.inputs[0]
    info = {"stride": list(wrapper.stride), "short_side": min(size),
            "readout": "cls-token" if wrapper.pool_type == "tok" else "tower-avg",
            "max_crops": max_crops, "resize": "shortest side to short_side, PIL bilinear, aspect kept",
            "size_range": f"H x W in [{t.min[2]}x{t.min[3]}, {t.max[2]}x{t.max[3]}]"}
    return (wrapper, s), info
