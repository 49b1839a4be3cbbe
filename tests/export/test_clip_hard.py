"""clip_hard (the released hard branch at the crop's aspect ratio) against the torch reference written from the
released ``get_cliphard`` (:func:`edgeseg.export.released_soft_reference.released_hard_embeddings`) on square,
wide, tall, nearly-square and small crops, for a ViT-B/16-like tiny "tok" tower (224 px, 16 px patches: the
released readout) and the bundled avg-pool clip_toy (edgeseg's analogue); the ONNX export vs torch at the
profile's min / opt / max and odd sizes; the runtime's crop sizing and the one-line error of a bundle without it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.export import clip_hard as ch
from edgeseg.export.released_soft_reference import released_hard_embeddings

torch.set_num_threads(1)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
B16_CFG = {"embed_dim": 32, "quick_gelu": False,
           "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
                          "pool_type": "tok"},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
# H x W of the crops fed to the wrapper: the tower's own square size (position embeddings as stored), wider,
# taller, one column short of square in patches (224 x 230: the same 14 x 14 grid, H != W: interpolated), tall
# (aspect 4), small, and sides that are no multiple of the stride (the conv floors them)
SIZES = {"tok": [(224, 224), (224, 300), (300, 224), (224, 230), (224, 900), (40, 56), (37, 61)],
         "avg": [(96, 96), (96, 128), (128, 96), (96, 99), (96, 384), (16, 24), (101, 96)]}


def _b16_clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**B16_CFG).eval()
    with torch.no_grad():  # larger random class/pos embeddings so a wrong position grid shows in the outputs
        model.visual.class_embedding.mul_(8)
        model.visual.positional_embedding.mul_(4)
    return model


@pytest.fixture(scope="module", params=["tok", "avg"])
def tower(request):
    if request.param == "tok":
        visual = _b16_clip().visual
    else:
        from edgeseg.train.clip import load_clip

        visual = load_clip("clip_toy")[0].eval().visual
    return request.param, visual, ch.ClipHardWrapper(visual).eval()


def _feed(crop: np.ndarray) -> torch.Tensor:
    """h x w x 3 uint8 -> 1 x 3 x h x w normalized, as the runtime feeds clip_hard."""
    x = (crop.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def test_wrapper_equals_the_released_reference(tower):
    kind, visual, wrapper = tower
    rng = np.random.default_rng(0)
    for h, w in SIZES[kind]:
        crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            got = wrapper(_feed(crop)).numpy()
        want = released_hard_embeddings(visual, [crop], MEAN, STD)
        assert got.shape == want.shape == (1, visual.output_dim)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{kind} {h}x{w}")


def test_own_square_size_is_encode_image_and_other_sizes_are_not_a_squash(tower):
    """At the tower's own size the hard branch is open_clip's ``encode_image``; a 224 x 300 crop gives what the
    reference gives, and differs from squashing it to the CLIP input (the behaviour it replaces)."""
    kind, visual, wrapper = tower
    side = SIZES[kind][0][0]
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), F.normalize(visual(x), dim=-1), atol=1e-6, rtol=0)
        wide = torch.randn(1, 3, side, side * 4 // 3, generator=torch.Generator().manual_seed(2))
        squashed = F.interpolate(wide, (side, side), mode="bilinear", align_corners=False)
        assert (wrapper(wide) - F.normalize(visual(squashed), dim=-1)).abs().max() > 1e-3


def test_reference_resizes_the_shortest_side_as_torchvision():
    """``size=224``: T.Resize(224) first (shortest side, long side int(224 * long / short)), as get_cliphard;
    equal to feeding the runtime's resize_shortest output."""
    from edgeseg.runtime.refdiff_released import resize_shortest

    visual = _b16_clip().visual
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((50, 70), (120, 33), (224, 224))]
    got = released_hard_embeddings(visual, crops, MEAN, STD, size=224)
    want = released_hard_embeddings(visual, [resize_shortest(c, 224) for c in crops], MEAN, STD)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert [resize_shortest(c, 224).shape[:2] for c in crops] == [(224, 313), (814, 224), (224, 224)]
    with pytest.raises(ValueError, match=r"crop 0 must be h x w x 3 uint8 RGB, got \(4, 4\) uint8"):
        released_hard_embeddings(visual, [np.zeros((4, 4), np.uint8)], MEAN, STD)


def test_spec_range_and_facts():
    visual = _b16_clip().visual
    (_, s), info = ch.refdiff_hard_component(visual, {"image_size": [224, 224]})
    t = s.inputs[0]
    assert (t.shape, t.min, t.opt, t.max) == (("crops", 3, "height", "width"), (1, 3, 32, 32), (1, 3, 224, 224),
                                              (ch.MAX_CROPS, 3, 1344, 1344))
    assert s.outputs[0].shape == ("crops", 32)
    assert info["stride"] == [16, 16] and info["short_side"] == 224 and info["readout"] == "cls-token"
    with pytest.raises(ValueError, match="max_crops must be >= 1, got 0"):
        ch.spec((224, 224), (16, 16), 32, max_crops=0)


def test_onnx_export_matches_torch_at_min_opt_max_and_odd_sizes(tower, tmp_path):
    import onnxruntime as ort

    from edgeseg.export.bundle import export_component

    kind, visual, wrapper = tower
    size = SIZES[kind][0][0]
    (w, s), _ = ch.refdiff_hard_component(visual, {"image_size": [size, size]})
    path = tmp_path / "clip_hard.onnx"
    export_component(w.eval(), s, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    t = s.inputs[0]
    cases = [(1, t.min[2:]), (2, t.opt[2:]), (1, t.max[2:]), (3, (size, size * 4 // 3 + 3)), (1, (size + 5, size)),
             (2, (size, size + 6)), (ch.MAX_CROPS, (t.min[2] + 1, t.min[3] + 5))]
    for b, hw in cases:
        x = ch.example_inputs(s, batch=b, hw=hw, seed=b)[0]
        with torch.no_grad():
            want = w(x).numpy()
        got = sess.run(None, {"crops": x.numpy()})[0]
        assert got.shape == (b, visual.output_dim)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"{kind} {b} x {hw}")


def test_runtime_crop_sizes_keep_the_aspect_and_fit_the_profile():
    from edgeseg.runtime.refdiff_scorer import shortest_side_crop

    lo, hi = (16, 16), (576, 576)
    for (h, w), want in (((40, 60), (96, 144)), ((60, 40), (144, 96)), ((96, 96), (96, 96)), ((1, 1), (96, 96)),
                         ((10, 60), (96, 576)), ((10, 70), (82, 576)), ((400, 30), (576, 43)),
                         ((2, 200), (16, 576))):  # 100:1 -> the short side raised to the profile's min
        out = shortest_side_crop(np.zeros((h, w, 3), np.uint8), 96, lo, hi)
        assert out.shape == (*want, 3), (h, w)


def test_a_bundle_without_clip_hard_is_refused_in_one_line(refdiff_bundle, tmp_path):
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.runtime.refdiff_scorer import ProposalScorer

    old = tmp_path / "refdiff_old"
    shutil.copytree(refdiff_bundle, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["components"]["clip_hard"], man["method_config"]["clip_hard"]
    (old / "clip_hard.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(man))
    want = (f"bundle {old} has no clip_hard component (exported before hard_resize='shortest_side' existed): "
            f"re-export it (edgeseg export refdiff ...), or pass hard_resize='clip_input'")
    with pytest.raises(ValueError) as err:
        RefDiffPredictor(old, cache_dir=None)  # the released preset: shortest_side
    assert str(err.value) == want
    with pytest.raises(ValueError) as err:
        ProposalScorer(old, cache_dir=None, hard_resize="shortest_side")
    assert str(err.value) == want
    pred = RefDiffPredictor(old, cache_dir=None, hard_resize="clip_input")
    assert pred.scorer.COMPONENTS == ("clip_text", "clip_masked")
    assert RefDiffPredictor(refdiff_bundle, cache_dir=None).scorer.COMPONENTS == ("clip_text", "clip_masked",
                                                                                   "clip_hard")
