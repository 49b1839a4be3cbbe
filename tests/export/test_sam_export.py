"""SAM components of the Ref-Diff bundle: ONNX (legacy exporter) vs torch parity, batched prompts, image aspect
ratios (export-notes trap 8), and the runtime AMG on the exported decoder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export import sam_decoder, sam_encoder  # noqa: E402
from edgeseg.export.refdiff_sam import sam_components  # noqa: E402
from edgeseg.runtime.sam_auto import generate_masks, postprocess_masks, sam_preprocess  # noqa: E402


def _export(wrapper, spec, module, path):
    args = module.example_inputs(spec, "opt", batch=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
                          opset_version=spec.opset, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    torch.set_num_threads(1)
    comps, info = sam_components("sam_toy")
    tmp = tmp_path_factory.mktemp("sam_onnx")
    enc_w, enc_s = comps[sam_encoder.NAME]
    dec_w, dec_s = comps[sam_decoder.NAME]
    enc = _export(enc_w, enc_s, sam_encoder, tmp / "sam_encoder.onnx")
    dec = _export(dec_w, dec_s, sam_decoder, tmp / "sam_decoder.onnx")
    return {"comps": comps, "info": info, "enc": enc, "dec": dec}


def _feeds(args, spec):
    return {t.name: a.numpy() for t, a in zip(spec.inputs, args)}


def test_info_contract(toy):
    info = toy["info"]
    assert info["sam_preprocessing"]["img_size"] == 128
    assert info["mask_threshold"] == 0.0
    for key in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "stability_offset",
                "box_nms_thresh", "min_mask_area", "top_k", "batch", "img_size"):
        assert key in info["amg"]
    assert info["amg"]["top_k"] == 10
    assert set(toy["comps"]) == {"sam_encoder", "sam_decoder"}


def test_encoder_parity(toy):
    wrapper, spec = toy["comps"][sam_encoder.NAME]
    (x,) = sam_encoder.example_inputs(spec, batch=1, seed=5)
    with torch.no_grad():
        ref = wrapper(x).numpy()
    (out,) = toy["enc"].run(None, {"image": x.numpy()})
    assert out.shape == (1, 64, 16, 16)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("n,p", [(1, 2), (5, 2), (3, 3)])
def test_decoder_parity(toy, n, p):
    wrapper, spec = toy["comps"][sam_decoder.NAME]
    emb, coords, labels = sam_decoder.example_inputs(spec, batch=n, seed=n)
    if p == 3:  # two foreground points and a background point per prompt
        coords = torch.cat([coords, coords[:, :1] + 9], dim=1)
        labels = torch.cat([labels, torch.zeros(n, 1)], dim=1)
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(emb, coords, labels)]
    out = toy["dec"].run(None, _feeds((emb, coords, labels), spec))
    assert out[0].shape == (n, 4, 64, 64) and out[1].shape == (n, 4)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, atol=1e-4)


def test_decoder_matches_segment_anything_predictor(toy):
    """The wrapper (arithmetic prompt embedding, expanded image embedding) equals SAM's own prompt encoder +
    MaskDecoder for points and boxes."""
    from edgeseg.train.sam import load_sam

    sam, _ = load_sam("sam_toy")
    wrapper, _ = toy["comps"][sam_decoder.NAME]
    emb = torch.randn(1, 64, 16, 16, generator=torch.Generator().manual_seed(0))
    pts = torch.tensor([[[30.0, 40.0]], [[100.0, 20.0]]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(2, 1)), boxes=None, masks=None)
        ref_m, ref_i = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        coords = torch.cat([pts, torch.zeros(2, 1, 2)], dim=1)
        m, i = wrapper(emb, coords, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        box = torch.tensor([[10.0, 12.0, 60.0, 70.0]])
        sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
        ref_bm, _ = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        bm, _ = wrapper(emb, box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(m, ref_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i, ref_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bm, ref_bm, atol=1e-5, rtol=1e-5)


def test_batched_decoder_equals_per_prompt_calls(toy):
    _, spec = toy["comps"][sam_decoder.NAME]
    emb, coords, labels = sam_decoder.example_inputs(spec, batch=7, seed=11)
    batched = toy["dec"].run(None, _feeds((emb, coords, labels), spec))
    for k in range(7):
        single = toy["dec"].run(None, _feeds((emb, coords[k:k + 1], labels[k:k + 1]), spec))
        np.testing.assert_allclose(batched[0][k:k + 1], single[0], atol=1e-4)
        np.testing.assert_allclose(batched[1][k:k + 1], single[1], atol=1e-5)


@pytest.mark.parametrize("hw", [(96, 64), (48, 96)])
def test_pipeline_matches_sam_predictor_at_aspect_ratios(toy, hw):
    """numpy preprocess -> ORT encoder -> ORT decoder -> numpy upsampling equals segment_anything's
    SamPredictor (which crops with the real image size, the part frozen in the official export)."""
    from segment_anything import SamPredictor

    from edgeseg.train.sam import load_sam

    sam, cfg = load_sam("sam_toy")
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    image[hw[0] // 4: hw[0] // 2, hw[1] // 4: hw[1] // 2] = (215, 40, 35)
    pred = SamPredictor(sam)
    pred.set_image(image)
    point = np.array([[hw[1] * 0.35, hw[0] * 0.35]])
    with torch.no_grad():
        ref, ref_iou, ref_low = pred.predict(point, np.array([1]), multimask_output=True, return_logits=True)
    x, input_hw = sam_preprocess(image, cfg["preprocessing"])
    assert input_hw == tuple(pred.input_size)
    (emb,) = toy["enc"].run(None, {"image": x})
    np.testing.assert_allclose(emb, pred.features.numpy(), atol=1e-4)
    scale = np.array([input_hw[1] / hw[1], input_hw[0] / hw[0]])
    coords = np.array([[point[0] * scale, [0, 0]]], np.float32)
    low, iou = toy["dec"].run(None, {"image_embeddings": emb, "point_coords": coords,
                                     "point_labels": np.array([[1, -1]], np.float32)})
    np.testing.assert_allclose(low[0, 1:], ref_low, atol=1e-3)
    np.testing.assert_allclose(iou[0, 1:], ref_iou, atol=1e-4)
    masks = postprocess_masks(low[0, 1:], input_hw, hw, cfg["preprocessing"]["img_size"])
    assert masks.shape == (3, *hw)
    np.testing.assert_allclose(masks, ref, atol=1e-3)


def test_amg_on_onnx_decoder_equals_torch_decoder(toy):
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig
    from edgeseg.train.sam import load_sam
    from edgeseg.train.train_sam import torch_decoder

    sam, cfg = load_sam("sam_toy")
    scene = ToyWorld("seen", 0, ToyWorldConfig(size=96))[5]
    amg = toy["info"]["amg"]
    x, hw = sam_preprocess(scene.image, toy["info"]["sam_preprocessing"])
    (emb,) = toy["enc"].run(None, {"image": x})
    names = ("low_res_masks", "iou_predictions")
    onnx_masks = generate_masks(lambda f: dict(zip(names, toy["dec"].run(list(names), f))), emb, (96, 96), hw, amg)[0]
    torch_masks = generate_masks(torch_decoder(sam), emb, (96, 96), hw, amg)[0]
    assert len(onnx_masks) == len(torch_masks) > 0
    for a, b in zip(onnx_masks, torch_masks):
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.99


def test_spec_errors():
    with pytest.raises(ValueError, match="multiple of the embedding grid"):
        sam_encoder.spec(100, 16, 64)
    with pytest.raises(ValueError, match="opt_prompts"):
        sam_decoder.spec(128, 16, 64, max_prompts=8, opt_prompts=16)
    s = sam_decoder.spec(128, 16, 64)
    assert s.dynamic_axes()["point_coords"] == {0: "prompts", 1: "points"}
    assert s.dynamic_axes()["image_embeddings"] == {}


def test_onnx_io_shapes(toy):
    dec, enc = toy["dec"], toy["enc"]
    assert [i.shape for i in dec.get_inputs()] == [[1, 64, 16, 16], ["prompts", "points", 2], ["prompts", "points"]]
    assert [o.shape for o in dec.get_outputs()] == [["prompts", 4, 64, 64], ["prompts", 4]]
    assert enc.get_inputs()[0].shape == ["batch", 3, 128, 128]
