"""``captured_scores`` (the context manager behind ``reference_attention`` / ``reference_logits``): it hands back
the maps its reader keeps, and gives every layer its processor back, with no ``get_attention_scores`` wrapper left,
both on a normal exit and when the forward raises."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from edgeseg.train.attn_capture import captured_scores, cross_attention_layers  # noqa: E402
from edgeseg.train.ldm import build_ldm  # noqa: E402


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 24, 24, generator=g), torch.tensor([11.0]), torch.randn(1, 77, 32, generator=g))


def _keep_probs(mod, q, k, mask, orig):
    p = orig(q, k, mask)
    return p.view(-1, mod.heads, p.shape[1], p.shape[2]).mean(1), p


@pytest.mark.parametrize("fail", [False, True])
def test_processors_restored_on_exit_and_on_exception(fail):
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.set_num_threads(1)
    _, _, unet, _ = build_ldm("toy-tiny", seed=3)
    unet.set_attn_processor(AttnProcessor2_0())
    names = cross_attention_layers(unet)
    before = {n: unet.get_submodule(n).processor for n in names}
    x, t, s = _inputs()
    with torch.no_grad():
        plain = unet(x, t, s).sample
    got = None
    try:
        with captured_scores(unet, names, _keep_probs) as got:
            with torch.no_grad():
                out = unet(x, t, s).sample
            if fail:
                raise KeyError("boom")
    except KeyError as e:
        assert fail and str(e) == "'boom'"
    assert set(got) == set(names)
    for n in names:
        assert got[n].shape[0] == 1 and torch.allclose(got[n].sum(-1), torch.ones(()), atol=1e-5)
        mod = unet.get_submodule(n)
        assert mod.processor is before[n]
        assert "get_attention_scores" not in mod.__dict__
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
