"""clip_masked: ONNX parity (the released native branch at several spatial sizes too), soft-branch semantics
(full mask == encode_image, masks respected, patch features untouched, proposals independent), crops ==
encode_image; a tiny "tok" CLIP and the bundled avg-pool clip_toy. The released branch against its reference:
tests/export/test_clip_masked_native.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_support import TOWERS, clip_tower, tok_clip  # tests/export is on sys.path (pytest prepends it)
from edgeseg.export import clip_masked as cm

torch.set_num_threads(1)

@pytest.fixture(scope="module", params=TOWERS)
def model(request):
    clip = clip_tower(request.param)
    wrapper = cm.ClipMaskedWrapper(clip.visual).eval()
    size = tuple(clip.visual.image_size) if isinstance(clip.visual.image_size, tuple) else (clip.visual.image_size,) * 2
    s = cm.spec(size, tuple(clip.visual.grid_size), clip.visual.output_dim, max_proposals=16)
    return request.param, clip, wrapper, s


@pytest.fixture(scope="module")
def onnx_session(model, tmp_path_factory):
    import onnxruntime as ort

    _, _, wrapper, s = model
    path = tmp_path_factory.mktemp("clip_masked") / "clip_masked.onnx"
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, cm.example_inputs(s, batch=2), str(path),
                              input_names=[t.name for t in s.inputs], output_names=[t.name for t in s.outputs],
                              dynamic_axes=s.dynamic_axes(), opset_version=s.opset, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(wrapper, *xs):
    with torch.no_grad():
        return wrapper(*xs)


@pytest.mark.parametrize("n,hw", [(1, None), (5, None), (1, (40, 64)), (3, (64, 40)), (3, (45, 70)),
                                  (1, (16, 16))])
def test_onnx_parity(model, onnx_session, n, hw):
    """All three outputs; the native image at the export size (None), non-square, non-multiple-of-stride and
    minimum sizes: the spatial axes are dynamic in the graph, not frozen at the traced example."""
    _, _, wrapper, s = model
    xs = cm.example_inputs(s, batch=n, seed=n, native_hw=hw)
    want = _run(wrapper, *xs)
    got = onnx_session.run(None, {t.name: x.numpy() for t, x in zip(s.inputs, xs)})
    assert [g.shape for g in got] == [(n, s.outputs[0].shape[1])] * 3
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_full_mask_and_crops_equal_encode_image(model):
    _, clip, wrapper, s = model
    image, masks, crops = cm.example_inputs(s, batch=3)[:3]
    masks[1] = 1.0
    soft, crop = _run(wrapper, image, masks, crops)
    with torch.no_grad():
        plain = clip.encode_image(image, normalize=True)
        plain_crops = clip.encode_image(crops, normalize=True)
    torch.testing.assert_close(soft[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(soft[1], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(crop, plain_crops, atol=1e-5, rtol=0)
    assert (soft[2] - plain[0]).abs().max() > 1e-3  # a partial mask gives another embedding


def test_proposals_independent(model):
    _, _, wrapper, s = model
    image, masks, crops = cm.example_inputs(s, batch=5, seed=3)[:3]
    soft5, crop5 = _run(wrapper, image, masks, crops)
    for i in (0, 3):
        soft1, crop1 = _run(wrapper, image, masks[i:i + 1], crops[i:i + 1])
        torch.testing.assert_close(soft1[0], soft5[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(crop1[0], crop5[i], atol=1e-5, rtol=0)
    # reordering proposals reorders the outputs
    perm = torch.tensor([4, 2, 0, 1, 3])
    soft_p, _ = _run(wrapper, image, masks[perm], crops[perm])
    torch.testing.assert_close(soft_p, soft5[perm], atol=1e-5, rtol=0)


def test_masked_reference(model):
    """Against a direct per-proposal reference: tok = a class token attending to itself + the mask's patches
    (boolean -inf mask built with loops) on top of the plain patch stream; avg = masked mean via indexing."""
    kind, clip, wrapper, s = model
    image, masks, crops = cm.example_inputs(s, batch=4, seed=7)[:3]
    soft, _ = _run(wrapper, image, masks, crops)
    v = clip.visual
    m = masks.flatten(1) > 0.5
    with torch.no_grad():
        x = v._embeds(image)
        P = x.shape[1] - 1
        for i in range(len(m)):
            if kind == "avg":
                tokens = v.ln_post(v.transformer(x))[0, 1:]
                ref = tokens[m[i]].mean(0) @ v.proj
            else:
                seq = torch.cat([x, x[:, :1]], dim=1)  # [cls, patches, copy]
                block = torch.zeros(P + 2, P + 2, dtype=torch.bool)
                block[:P + 1, P + 1] = True
                block[P + 1, 0] = True
                for j in range(P):
                    block[P + 1, 1 + j] = not bool(m[i, j])
                additive = torch.zeros(P + 2, P + 2).masked_fill(block, float("-inf"))
                seq = v.transformer(seq, attn_mask=additive)  # open_clip casts masks to float: no bool
                ref = v.ln_post(seq[0, -1]) @ v.proj
            torch.testing.assert_close(soft[i], F.normalize(ref, dim=-1), atol=1e-5, rtol=0)


def test_patch_features_unchanged_by_copies(model):
    kind, _, wrapper, s = model
    if kind != "tok":
        pytest.skip("avg-pool readout runs the plain forward")
    image, masks = cm.example_inputs(s, batch=5)[:2]
    with torch.no_grad():
        x = wrapper.visual._embeds(image)
        plain = wrapper.visual.transformer(x)  # open_clip's own blocks
        m = masks.flatten(1)
        mixed = wrapper.masked_sequence(x, m)
    P = wrapper.num_patches
    torch.testing.assert_close(mixed[:, :1 + P], plain, atol=1e-5, rtol=0)
    mask = wrapper.attention_mask(m)
    assert mask.shape == (1 + P + 5, 1 + P + 5) and torch.isfinite(mask).all()


def test_empty_mask_no_nan(model):
    _, _, wrapper, s = model
    image, masks, crops, native, nm = cm.example_inputs(s, batch=2)
    masks[1] = 0.0
    nm[1] = 0.0
    soft, crop, nat = _run(wrapper, image, masks, crops, native, nm)
    assert torch.isfinite(soft).all() and torch.isfinite(crop).all() and torch.isfinite(nat).all()


def test_spec_and_example_inputs():
    s = cm.spec((96, 96), (12, 12), 128)
    assert s.name == cm.NAME == "clip_masked"
    # the branches' proposal axes are named apart (the runtime feeds an unread branch one proposal)
    assert s.dynamic_axes() == {"image": {}, "patch_masks": {0: "proposals"}, "crops": {0: "crops"},
                                "native_image": {2: "height", 3: "width"},
                                "native_masks": {0: "native_proposals", 1: "grid_h", 2: "grid_w"},
                                "masked_embeds": {0: "proposals"}, "crop_embeds": {0: "crops"},
                                "native_embeds": {0: "native_proposals"}}
    assert s.inputs[1].max == (32, 12, 12) and s.inputs[1].opt == (8, 12, 12)
    native, nm = s.input("native_image"), s.input("native_masks")
    assert (native.min, native.opt, native.max) == ((1, 3, 16, 16), (1, 3, 96, 96), (1, 3, 576, 576))
    assert (nm.min, nm.opt, nm.max) == ((1, 2, 2), (8, 12, 12), (32, 72, 72))
    b16 = cm.spec((224, 224), (14, 14), 512).input("native_image")
    assert (b16.min, b16.max) == ((1, 3, 32, 32), (1, 3, 1344, 1344))
    assert cm.spec((224, 224), (14, 14), 512, native_max_side=1000).input("native_image").max == (1, 3, 992, 992)
    with pytest.raises(ValueError, match=r"native_max_side 100 must be >= the image size \(224, 224\)"):
        cm.spec((224, 224), (14, 14), 512, native_max_side=100)
    image, masks, crops, nat, nmasks = cm.example_inputs(s, "max")
    assert image.shape == (1, 3, 96, 96) and masks.shape == (32, 12, 12) and crops.shape == (32, 3, 96, 96)
    assert nat.shape == (1, 3, 576, 576) and nmasks.shape == (32, 72, 72)
    assert cm.example_inputs(s, "min", native_hw=(45, 70))[4].shape == (1, 5, 8)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and (masks.flatten(1).sum(1) >= 1).all()
    with pytest.raises(ValueError, match="max_proposals"):
        cm.spec((96, 96), (12, 12), 128, max_proposals=0)
    with pytest.raises(ValueError, match="which"):
        cm.example_inputs(s, "biggest")


def test_rejects_unsupported_pooling():
    clip = tok_clip()
    clip.visual.pool_type = "none"
    with pytest.raises(ValueError, match="pool_type 'tok' or 'avg'"):
        cm.ClipMaskedWrapper(clip.visual)
