"""The released preset's attention map (``attention_map="released_lanczos"``): the runtime localizer, reading the
UNet's ``attn_logits`` through ONNX Runtime, equals the PyTorch reference written from the released
``get_diffattn`` (:meth:`edgeseg.export.refdiff_reference.TorchRefDiff.released_attention`) on the toy bundle,
square and non-square images, one expression or several per UNet batch; a bundle exported before ``attn_logits``
existed is refused with one line naming the fix."""

import json
import shutil

import numpy as np
import pytest

from edgeseg.runtime.bundle import BundleError
from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.runtime.refdiff_localize import LOCALIZER_DEFAULTS, AttentionLocalizer
from edgeseg.runtime.refdiff_presets import PRESETS
from edgeseg.train.data.refer import ReferWorld

pytest.importorskip("diffusers")
RELEASED = {k: PRESETS["released"][k] for k in LOCALIZER_DEFAULTS}


@pytest.fixture(scope="module")
def loc(refdiff_bundle):
    return AttentionLocalizer(refdiff_bundle, cache_dir=None, **RELEASED)


@pytest.fixture(scope="module")
def ref():
    import torch

    from edgeseg.export.refdiff_reference import TorchRefDiff

    torch.set_num_threads(1)
    return TorchRefDiff("toy", preset="released")


def _cases():
    """(image, expression, token): square ToyWorld scenes and crops of them, wide and tall."""
    world = ReferWorld(11)
    out = []
    for i in range(9):
        s = world[i]
        img = s.scene.image
        img = img if i % 3 == 0 else img[:, 10:82] if i % 3 == 1 else img[18:70]
        out.append((np.ascontiguousarray(img), s.expression.text, 1 + i % 4))
    return out


def test_released_map_equals_the_torch_reference(loc, ref):
    for img, text, token in _cases():
        c = loc.attention(loc.encode(img), loc.text_states(loc.prompts([loc_parse(text)])), [token],
                          img.shape[:2])[0]
        want = ref.released_attention(img, text, token)
        assert c.shape == want.shape == img.shape[:2] and c.dtype == np.float32
        assert c.min() == 0.0 and abs(float(c.max()) - 1.0) < 1e-6
        np.testing.assert_allclose(c, want, atol=1e-4, rtol=0, err_msg=f"{text!r} {img.shape}")


def test_several_expressions_in_one_unet_batch_read_their_own_rows(loc, ref):
    img, _, _ = _cases()[1]
    texts, tokens = ["the red circle", "a blue star on the left", "the green square"], [3, 2, 3]
    c = loc.attention(loc.encode(img), loc.text_states(loc.prompts([loc_parse(t) for t in texts])), tokens,
                      img.shape[:2])
    for got, text, token in zip(c, texts, tokens):
        np.testing.assert_allclose(got, ref.released_attention(img, text, token), atol=1e-4, rtol=0)
    assert np.abs(c[0] - c[1]).max() > 0.05  # different expressions, different maps


def loc_parse(text: str):
    from edgeseg.runtime.refer_text import parse_expression

    return parse_expression(text, None)


STALE = ("bundle {}: unet_attn has no attn_logits output, which attention_map='released_lanczos' (preset "
         "'released') needs: re-export it with `edgeseg export refdiff CONFIG --out DIR` (e.g. CONFIG toy), or use "
         "preset='paper'")


def test_a_bundle_without_attn_logits_is_refused_in_one_line(refdiff_bundle, tmp_path):
    stale = tmp_path / "stale"
    shutil.copytree(refdiff_bundle, stale)
    man = json.loads((stale / "manifest.json").read_text())
    unet = man["components"]["unet_attn"]
    unet["outputs"] = [o for o in unet["outputs"] if o["name"] != "attn_logits"]
    del man["method_config"]["attention"]["logits"]
    (stale / "manifest.json").write_text(json.dumps(man))
    for make in (lambda: AttentionLocalizer(stale, cache_dir=None, **RELEASED),
                 lambda: RefDiffPredictor(stale, cache_dir=None)):
        with pytest.raises(BundleError) as e:
            make()
        assert str(e.value) == STALE.format(stale) and "\n" not in str(e.value)
    paper = RefDiffPredictor(stale, cache_dir=None, preset="paper")  # the paper's map needs no logits
    assert paper.localizer.logits_grid is None
