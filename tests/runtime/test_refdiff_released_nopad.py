"""The released non-padded diffusion geometry (``vae_geometry="released_resize"``, the released ``diffusion_pad:
False``) on a freshly exported ``toy-dynamic`` bundle: the runtime's released map equals the PyTorch reference
written from the released ``get_diffattn`` (no pad, BICUBIC to the multiple-floored size, logits at that size, the
stretch-then-crop quirk) for a wide and a tall image; the dynamic ONNX ``vae_encoder`` / ``unet_attn`` follow other
sizes than the one traced; fixed bundles, the paper map and out-of-profile images are refused in one line."""

import numpy as np
import pytest
from PIL import Image

from edgeseg.runtime.bundle import BundleError
from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.runtime.refdiff_localize import LOCALIZER_DEFAULTS, AttentionLocalizer
from edgeseg.runtime.refdiff_presets import PRESETS
from edgeseg.runtime.refdiff_released import attention_to_image, resize_target
from edgeseg.runtime.refer_text import parse_expression
from edgeseg.train.data.refer import ReferWorld

pytest.importorskip("diffusers")
NOPAD = {k: PRESETS["released"][k] for k in LOCALIZER_DEFAULTS} | {"vae_geometry": "released_resize"}


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("refdiff", "toy-dynamic", tmp_path_factory.mktemp("nopad") / "toy-dynamic", progress=False)


@pytest.fixture(scope="module")
def loc(dynamic_bundle):
    return AttentionLocalizer(dynamic_bundle, cache_dir=None, **NOPAD)


@pytest.fixture(scope="module")
def ref():
    import torch

    from edgeseg.export.refdiff_reference import TorchRefDiff

    torch.set_num_threads(1)
    return TorchRefDiff("toy-dynamic", preset="released", vae_geometry="released_resize")


def _wide_and_tall():
    """(image, expression): a wide 52 x 96 and a tall 96 x 72 crop of ToyWorld scenes."""
    world = ReferWorld(11)
    a, b = world[0], world[1]
    return [(np.ascontiguousarray(a.scene.image[18:70]), a.expression.text),
            (np.ascontiguousarray(b.scene.image[:, 10:82]), b.expression.text)]


def _map(loc, img, text, token):
    states = loc.text_states(loc.prompts([parse_expression(text, None)]))
    return loc.attention(loc.encode(img), states, [token], img.shape[:2])[0]


def test_the_manifest_records_the_dynamic_range(dynamic_bundle, loc):
    dyn = loc.bundle.manifest["method_config"]["sd_dynamic"]
    assert (dyn["multiple"], dyn["image_min"], dyn["image_opt"], dyn["image_max"]) == (16, [16, 16], [96, 96],
                                                                                      [96, 96])
    image = loc.bundle.spec("vae_encoder").input("image")
    assert image.shape[2:] == ("height", "width") and image.min[2:] == (16, 16) and image.max[2:] == (96, 96)
    sample = loc.bundle.spec("unet_attn").input("sample")
    assert sample.min[2:] == (4, 4) and sample.opt == (2, 4, 24, 24) and sample.max[2:] == (24, 24)
    assert isinstance(loc.bundle.spec("unet_attn").output("attn_logits").shape[2], str)


@pytest.mark.parametrize("case", [0, 1], ids=["wide", "tall"])
def test_released_nopad_map_equals_the_torch_reference(loc, ref, case):
    img, text = _wide_and_tall()[case]
    want_hw = resize_target(img.shape[:2], 96, 16)
    assert want_hw == ((48, 96), (96, 64))[case]
    assert loc.preprocess(img).shape == (1, 3, *want_hw)
    assert loc.encode(img).shape == (1, 4, want_hw[0] // 4, want_hw[1] // 4)
    for token in (1, 3):
        c = _map(loc, img, text, token)
        want = ref.released_attention(img, text, token)
        assert c.shape == want.shape == img.shape[:2] and c.dtype == np.float32
        assert c.min() == 0.0 and abs(float(c.max()) - 1.0) < 1e-6
        np.testing.assert_allclose(c, want, atol=1e-4, rtol=0, err_msg=f"{text!r} {img.shape} token {token}")
    padded = AttentionLocalizer(loc.bundle, cache_dir=None, **(NOPAD | {"vae_geometry": "diffusion_pad"}))
    assert np.abs(_map(padded, img, text, 3) - c).max() > 0.05  # a different geometry, a different map


def test_the_stretch_then_crop_quirk():
    small = np.random.default_rng(0).random((3, 6))  # the grid of a wide (non-square) resized image
    got = attention_to_image(small, (52, 96))
    q = Image.fromarray((small * 255).astype(np.uint8), mode="L").resize((96, 96), Image.LANCZOS)
    big = np.asarray(q, np.float64)[22:74] / 255  # rows (96 - 52) // 2 : + 52 of the stretched square
    np.testing.assert_allclose(got, (big - big.min()) / (big.max() - big.min() + 1e-8), atol=1e-6)
    q = Image.fromarray((small * 255).astype(np.uint8), mode="L").resize((96, 52), Image.LANCZOS)
    honest = np.asarray(q, np.float64) / 255  # what an aspect-true resize would give: not what is released
    assert np.abs(got - (honest - honest.min()) / (honest.max() - honest.min())).max() > 0.05
    assert resize_target((480, 640), 1024) == (768, 1024) and resize_target((500, 333), 1024) == (1024, 640)


@pytest.mark.parametrize("hw", [(64, 96), (48, 32)])
def test_dynamic_onnx_components_follow_other_sizes_than_the_traced_one(loc, ref, hw):
    import torch

    g = torch.Generator().manual_seed(sum(hw))
    x = torch.rand(1, 3, *hw, generator=g) * 2 - 1
    with torch.no_grad():
        want = ref.models["vae_encoder"](x).numpy()
    got = loc.bundle.run("vae_encoder", {"image": x.numpy()})["latent"]
    assert got.shape == (1, 4, hw[0] // 4, hw[1] // 4)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    sample = torch.randn(2, 4, hw[0] // 4, hw[1] // 4, generator=g)
    t, states = torch.tensor([51.0, 51.0]), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        want = dict(zip(("noise_pred", "attn", "attn_logits"), ref.models["unet_attn"](sample, t, states)))
    got = loc.bundle.run("unet_attn", {"sample": sample.numpy(), "timestep": t.numpy(),
                                       "encoder_hidden_states": states.numpy()})
    assert got["attn_logits"].shape == (2, 1, hw[0] // 16 * (hw[1] // 16), 77)
    assert got["attn"].shape == (2, 144, 77)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_the_predictor_runs_the_nopad_geometry(dynamic_bundle):
    img, text = _wide_and_tall()[0]
    pred = RefDiffPredictor(dynamic_bundle, cache_dir=None, vae_geometry="released_resize")
    res = pred.segment(img, text)
    assert res.attention.shape == res.mask.shape == img.shape[:2]
    np.testing.assert_array_equal(res.attention, _map(pred.localizer, img, text, res.target_token))


FIXED = ("bundle {}: vae_encoder / unet_attn take fixed 96x96 inputs, which vae_geometry='released_resize' cannot "
         "feed: re-export with a dynamic config (`edgeseg export refdiff toy-dynamic --out DIR`, or "
         "released-vit-h-nopad), or use vae_geometry='diffusion_pad'")


def test_one_line_errors(refdiff_bundle, loc, dynamic_bundle):
    for make in (lambda: AttentionLocalizer(refdiff_bundle, cache_dir=None, **NOPAD),
                 lambda: RefDiffPredictor(refdiff_bundle, cache_dir=None, vae_geometry="released_resize")):
        with pytest.raises(BundleError) as e:
            make()
        assert str(e.value) == FIXED.format(refdiff_bundle)
    with pytest.raises(ValueError) as e:
        AttentionLocalizer(dynamic_bundle, cache_dir=None, **(NOPAD | {"attention_map": "probabilities"}))
    assert str(e.value) == ("Ref-Diff option vae_geometry='released_resize' is the released geometry of the "
                            "released map: it needs attention_map='released_lanczos', got 'probabilities'")
    with pytest.raises(ValueError) as e:
        loc.preprocess(np.zeros((8, 96, 3), np.uint8))
    assert str(e.value) == ("vae_geometry='released_resize': image 8x96 scales to 0x96 px, outside the bundle's "
                            "VAE profile 16x16..96x96 (aspect ratio over 6:1); use vae_geometry='diffusion_pad'")
    with pytest.raises(ValueError, match="Ref-Diff option vae_geometry='resize': must be one of"):
        AttentionLocalizer(dynamic_bundle, cache_dir=None, vae_geometry="resize")
    paper = AttentionLocalizer(dynamic_bundle, cache_dir=None)  # the paper map still runs at the opt size
    assert paper.preprocess(np.zeros((52, 96, 3), np.uint8)).shape == (1, 3, 96, 96)


def test_sd_dynamic_must_be_a_bool(tmp_path):
    import json

    from edgeseg.export.refdiff_bundle import resolve_config

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"ldm": "ldm_toy", "sam": "sam_toy", "clip": "clip_toy", "sd_dynamic": "yes"}))
    with pytest.raises(ValueError) as e:
        resolve_config(cfg)
    assert str(e.value) == f"Ref-Diff config {str(cfg)!r}: sd_dynamic 'yes' must be true or false"
    assert resolve_config("toy-dynamic")["sd_dynamic"] and not resolve_config("toy")["sd_dynamic"]
    assert resolve_config("released-vit-h-nopad")["sd_image_size"] == 1024
