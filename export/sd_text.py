"""Component ``sd_text``: SD-style token ids N x 77 int64 -> CLIP text hidden states N x 77 x D float32.

Stable Diffusion conditions its UNet on the *last hidden state* (after the final layer norm) of a CLIP text
transformer, for every token position: no pooling, no projection, no normalization. Ids are CLIP BPE ids
``sot, words..., eot`` padded with eot (49407) to 77 (``ClipTokenizer(tok, 77, pad_id=49407)`` in the runtime).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.export.spec import ComponentSpec, TensorSpec, dynamic_input

NAME = "sd_text"
SOT, EOT = 49406, 49407


class SDTextWrapper(nn.Module):
    """Export-only: ``CLIPTextModel(input_ids).last_hidden_state``; no data-dependent control flow."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids N x L int64 -> hidden_states N x L x D float32."""
        return self.text_encoder(input_ids=input_ids, return_dict=False)[0]


def spec(context_length: int, hidden_dim: int, max_batch: int = 32) -> ComponentSpec:
    """``input_ids`` N x L int64 (N in [1, max_batch], opt 2: uncond + one prompt) -> ``hidden_states``."""
    L = context_length
    return ComponentSpec(
        NAME,
        inputs=(dynamic_input("batch", "input_ids", (L,), max_batch, opt_n=2, dtype="int64"),),
        outputs=(TensorSpec("hidden_states", "float32", ("batch", L, hidden_dim)),),
        description="SD CLIP text encoder, last hidden state (eot-padded ids)",
    )


def example_ids(context_length: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Valid SD ids: sot, a few word ids, eot, eot padding (row 0 is the empty prompt)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, context_length), EOT, dtype=torch.int64)
    ids[:, 0] = SOT
    for b in range(batch):
        n = min(b * 3, context_length - 2)
        if n:
            ids[b, 1:1 + n] = torch.randint(300, 20000, (n,), generator=g)
    return ids


def example_inputs(spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(input_ids,)`` at the spec's min/opt/max batch (or ``batch``)."""
    shape = getattr(spec.inputs[0], which)
    return (example_ids(shape[1], batch or shape[0], seed),)
