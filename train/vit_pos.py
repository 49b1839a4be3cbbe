"""A ViT's position embedding resized to the input's patch grid, fixed once for export.

:class:`FixedPosEmbed` is the shared part of :class:`edgeseg.train.lseg_official.LSegOfficial` (lang-seg's
bilinear ``_resize_pos_embed``) and :class:`edgeseg.train.tcl_official.TCLOfficial` (sclip's bicubic
``interpolate_pos_emb``): each model writes its own resize as :meth:`FixedPosEmbed._resize_pos_embed` and reads
:meth:`FixedPosEmbed._pos_embed`; :meth:`FixedPosEmbed.fix_input_size` stores the resized table as a
non-persistent buffer, so an exported graph holds a constant instead of a Resize (the same values).
"""

from __future__ import annotations

import torch
from torch import nn


class FixedPosEmbed(nn.Module):
    """Mixin for a ViT module with a ``patch`` size (pixels) and a :meth:`_resize_pos_embed`. The table's layout
    is the model's own (LSeg 1 x (1 + gh*gw) x W, TCL (1 + gh*gw) x W)."""

    patch: int

    def fix_input_size(self, h: int, w: int) -> None:
        """Resize the position embedding for h x w inputs once, after the weights are loaded: the exported graph
        then holds it as a constant (same values as resizing in every forward; TensorRT has no bicubic Resize)."""
        with torch.no_grad():
            fixed = self._pos_embed(h // self.patch, w // self.patch).detach().clone()
        self.register_buffer("_pos_fixed", fixed, persistent=False)
        self._pos_grid = (h // self.patch, w // self.patch)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """The position embedding for a gh x gw patch grid: the table fixed by :meth:`fix_input_size` when it is
        for that grid, else :meth:`_resize_pos_embed`."""
        if getattr(self, "_pos_grid", None) == (gh, gw):
            return self._pos_fixed
        return self._resize_pos_embed(gh, gw)

    def _resize_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """The model's own resize of its position embedding to a gh x gw grid, class token kept."""
        raise NotImplementedError(f"{type(self).__name__} must define _resize_pos_embed(gh, gw)")
