"""The CLIP towers shared by the clip_masked tests (imported by name: pytest puts tests/export on sys.path for
its test files): a tiny random "tok" CLIP (class-token readout, as the released code reads it) and the bundled
avg-pool ``clip_toy`` (edgeseg's analogue). Each test file parametrizes its own module-scoped fixture over
:data:`TOWERS` and builds the tower with :func:`clip_tower`. (Not a tests/export/conftest.py: test_parity.py and
test_precision.py import tests/conftest.py as ``conftest``, which a second conftest on the path would shadow.)"""

from __future__ import annotations

import torch

TOWERS = ("tok", "avg")  # the kinds :func:`clip_tower` builds, in test order
TOK_CFG = {"embed_dim": 32, "quick_gelu": False,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8,
                          "pool_type": "tok"},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def tok_clip() -> torch.nn.Module:
    """The tiny "tok" open_clip CLIP (32 x 32 input, 8-pixel patches, 4 x 4 grid, 32-dim embeddings), seeded, in
    eval mode, with its class and position embeddings scaled up so that masking visibly changes the outputs."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TOK_CFG).eval()
    with torch.no_grad():  # larger random class/pos embeddings so masking visibly changes the outputs
        model.visual.class_embedding.mul_(8)
        model.visual.positional_embedding.mul_(4)
    return model


def clip_tower(kind: str) -> torch.nn.Module:
    """A whole CLIP (eval mode) of ``kind``: "tok" (:func:`tok_clip`) or "avg" (the bundled ``clip_toy``)."""
    if kind == "tok":
        return tok_clip()
    if kind == "avg":
        from edgeseg.train.clip import load_clip

        return load_clip("clip_toy")[0]
    raise ValueError(f"unknown CLIP tower {kind!r}; pick one of {list(TOWERS)}")
