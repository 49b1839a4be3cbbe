"""SAM components of the Ref-Diff bundle: ONNX (legacy exporter) vs torch and vs the straightforward decoder
graph, batched prompts, image aspect ratios (export-notes trap 8), the sam_masks post-processing against numpy
and segment_anything, and the runtime AMG through both engines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export import sam_decoder, sam_encoder, sam_masks  # noqa: E402
from edgeseg.export.refdiff_sam import sam_components  # noqa: E402
from edgeseg.runtime.sam_auto import generate_masks, postprocess_masks, resize_matrices, sam_preprocess  # noqa: E402


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
    sess = {}
    for name, module in ((sam_encoder.NAME, sam_encoder), (sam_decoder.NAME, sam_decoder), (sam_masks.NAME, sam_masks)):
        wrapper, spec = comps[name]
        sess[name] = _export(wrapper, spec, module, tmp / f"{name}.onnx")
    return {"comps": comps, "info": info, "enc": sess[sam_encoder.NAME], "dec": sess[sam_decoder.NAME],
            "masks": sess[sam_masks.NAME]}


def _feeds(args, spec):
    return {t.name: a.numpy() for t, a in zip(spec.inputs, args)}


def _run(sess, feeds):
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _low_res(toy, emb, coords, labels):
    """ORT decoder -> ORT sam_masks: (N x 4 x 4g x 4g low-res logits, N x 4 IoU) for any prompts."""
    dec = _run(toy["dec"], {"image_embeddings": emb, "point_coords": coords, "point_labels": labels})
    rows, cols = resize_matrices(64, (128, 128), (8, 8), 128)
    out = _run(toy["masks"], {"image_tokens": dec["image_tokens"], "hyper_in": dec["hyper_in"], "resize_rows": rows,
                              "resize_cols": cols, "thresholds": np.array([-1, 0, 1], np.float32)})
    return out["low_res_masks"], dec["iou_predictions"]


def test_info_contract(toy):
    info = toy["info"]
    assert info["sam_preprocessing"]["img_size"] == 128
    assert info["mask_threshold"] == 0.0
    for key in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "stability_offset",
                "box_nms_thresh", "min_mask_area", "top_k", "batch", "img_size"):
        assert key in info["amg"]
    assert info["amg"]["top_k"] == 10
    assert set(toy["comps"]) == {"sam_encoder", "sam_decoder", "sam_masks"}


def test_encoder_parity(toy):
    wrapper, spec = toy["comps"][sam_encoder.NAME]
    (x,) = sam_encoder.example_inputs(spec, batch=1, seed=5)
    with torch.no_grad():
        ref = wrapper(x).numpy()
    (out,) = toy["enc"].run(None, {"image": x.numpy()})
    assert out.shape == (1, 64, 16, 16)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("n,p", [(1, 2), (5, 2), (3, 3)])
def test_decoder_equals_reference_graph(toy, n, p):
    """The restructured decoder + sam_masks upscaling (ONNX) equal the straightforward wrapper (predict_masks on
    the expanded embedding, NCHW ConvTransposes) for points, boxes and several points per prompt."""
    wrapper, spec = toy["comps"][sam_decoder.NAME]
    emb, coords, labels = sam_decoder.example_inputs(spec, batch=n, seed=n)
    if p == 3:  # two foreground points and a background point per prompt
        coords = torch.cat([coords, coords[:, :1] + 9], dim=1)
        labels = torch.cat([labels, torch.zeros(n, 1)], dim=1)
    with torch.no_grad():
        ref_low, ref_iou = sam_decoder.SamDecoderReference(wrapper)(emb, coords, labels)
        iou, hyper, tokens = wrapper(emb, coords, labels)
        low = toy["comps"][sam_masks.NAME][0].upscale(tokens, hyper)
    torch.testing.assert_close(low, ref_low, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
    got_low, got_iou = _low_res(toy, emb.numpy(), coords.numpy(), labels.numpy())
    assert got_low.shape == (n, 4, 64, 64) and got_iou.shape == (n, 4)
    np.testing.assert_allclose(got_low, ref_low.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_iou, ref_iou.numpy(), atol=1e-5)


def test_decoder_matches_segment_anything_predictor(toy):
    """The wrappers (arithmetic prompt embedding, embedding shared by every prompt, reassociated attention,
    ConvTransposes as MatMuls) equal SAM's own prompt encoder + MaskDecoder for points and boxes."""
    from edgeseg.train.sam import load_sam

    sam, _ = load_sam("sam_toy")
    wrapper, _ = toy["comps"][sam_decoder.NAME]
    upscale = toy["comps"][sam_masks.NAME][0].upscale
    emb = torch.randn(1, 64, 16, 16, generator=torch.Generator().manual_seed(0))
    pts = torch.tensor([[[30.0, 40.0]], [[100.0, 20.0]]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(pts, torch.ones(2, 1)), boxes=None, masks=None)
        ref_m, ref_i = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        coords = torch.cat([pts, torch.zeros(2, 1, 2)], dim=1)
        i, hyper, tokens = wrapper(emb, coords, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        m = upscale(tokens, hyper)
        box = torch.tensor([[10.0, 12.0, 60.0, 70.0]])
        sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
        ref_bm, _ = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        _, bh, bt = wrapper(emb, box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]]))
        bm = upscale(bt, bh)
    torch.testing.assert_close(m, ref_m, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(i, ref_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bm, ref_bm, atol=1e-4, rtol=1e-5)


def test_batched_decoder_equals_per_prompt_calls(toy):
    _, spec = toy["comps"][sam_decoder.NAME]
    emb, coords, labels = sam_decoder.example_inputs(spec, batch=7, seed=11)
    batched = toy["dec"].run(None, _feeds((emb, coords, labels), spec))
    for k in range(7):
        single = toy["dec"].run(None, _feeds((emb, coords[k:k + 1], labels[k:k + 1]), spec))
        for b, o in zip(batched, single):
            np.testing.assert_allclose(b[k:k + 1], o, atol=1e-4)


@pytest.mark.parametrize("hw", [(96, 64), (48, 96)])
def test_pipeline_matches_sam_predictor_at_aspect_ratios(toy, hw):
    """numpy preprocess -> ORT encoder -> ORT decoder -> ORT sam_masks (upscaling, upsampling with the real
    image size, thresholds) equals segment_anything's SamPredictor (which crops with the real image size, the
    part frozen in the official export)."""
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

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
    dec = _run(toy["dec"], {"image_embeddings": emb, "point_coords": coords,
                            "point_labels": np.array([[1, -1]], np.float32)})
    np.testing.assert_allclose(dec["iou_predictions"][0, 1:], ref_iou, atol=1e-4)
    rows, cols = resize_matrices(64, input_hw, hw, cfg["preprocessing"]["img_size"])
    out = _run(toy["masks"], {"image_tokens": dec["image_tokens"], "hyper_in": dec["hyper_in"][:, 1:],
                              "resize_rows": rows, "resize_cols": cols,
                              "thresholds": np.array([-1, 0, 1], np.float32)})
    np.testing.assert_allclose(out["low_res_masks"][0], ref_low, atol=1e-3)
    assert out["masks"].shape == (1, 3, *hw) and out["masks"].dtype == np.float16
    np.testing.assert_allclose(postprocess_masks(out["low_res_masks"][0], input_hw, hw, 128), ref, atol=1e-3)
    ref_masks = torch.from_numpy(ref)
    clear = np.abs(ref) > 1e-3  # pixels whose sign float rounding cannot flip
    np.testing.assert_array_equal((out["masks"][0] > 0)[clear], (ref > 0)[clear])
    np.testing.assert_allclose(out["stability"][0], calculate_stability_score(ref_masks, 0.0, 1.0).numpy(), atol=2e-3)
    np.testing.assert_array_equal(out["areas"][0], (ref > 0).sum(axis=(1, 2)))
    np.testing.assert_array_equal(out["boxes"][0], batched_mask_to_box(ref_masks > 0).numpy())


def test_masks_graph_equals_numpy_post_processing(toy):
    """sam_masks (ONNX) on random logits equals the numpy path: the same masks, stability, areas and boxes,
    empty masks included (box 0, 0, 0, 0; stability 1 when nothing passes the loose threshold either)."""
    from edgeseg.runtime.sam_auto import mask_boxes, stability_score

    _, spec = toy["comps"][sam_masks.NAME]
    tokens, hyper, *_ = (t.numpy() for t in sam_masks.example_inputs(spec, batch=3, seed=4))
    hyper[0, 0] = 0.0  # an all-zero logit map: empty mask and strict mask, full loose mask
    for hw, input_hw in (((75, 96), (100, 128)), ((96, 40), (128, 53)), ((1, 5), (26, 128))):
        rows, cols = resize_matrices(64, input_hw, hw, 128)
        out = _run(toy["masks"], {"image_tokens": tokens, "hyper_in": hyper, "resize_rows": rows,
                                  "resize_cols": cols, "thresholds": np.array([-1, 0, 1], np.float32)})
        logits = postprocess_masks(out["low_res_masks"].reshape(-1, 64, 64), input_hw, hw, 128)
        m = logits > 0
        assert (out["masks"].reshape(m.shape) > 0).tolist() == m.tolist()
        np.testing.assert_allclose(out["stability"].reshape(-1), stability_score(logits, 0.0, 1.0), atol=1e-6)
        np.testing.assert_array_equal(out["areas"].reshape(-1), m.sum(axis=(1, 2)))
        np.testing.assert_array_equal(out["boxes"].reshape(-1, 4), mask_boxes(m))
    assert out["stability"][0, 0] == 0.0 and out["areas"][0, 0] == 0 and not out["boxes"][0, 0].any()
    far = _run(toy["masks"], {"image_tokens": tokens, "hyper_in": hyper, "resize_rows": rows, "resize_cols": cols,
                              "thresholds": np.array([1e4, 1e4 + 1, 1e4 + 2], np.float32)})
    assert (far["stability"] == 1.0).all() and not far["areas"].any() and not far["boxes"].any()


def _amg_runners(toy):
    return (lambda f: _run(toy["dec"], f)), (lambda f: _run(toy["masks"], f))


def test_amg_engine_path_equals_numpy_path_and_torch(toy):
    """generate_masks with the sam_masks engine (ORT) == the numpy post-processing on the reference decoder
    graph (torch): same count, IoU > 0.99 per mask, same scores; progress reported once per point batch."""
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig
    from edgeseg.train.sam import load_sam
    from edgeseg.train.train_sam import torch_decoder

    sam, cfg = load_sam("sam_toy")
    scene = ToyWorld("seen", 0, ToyWorldConfig(size=96))[5]
    amg = dict(toy["info"]["amg"], batch=20)
    x, hw = sam_preprocess(scene.image, toy["info"]["sam_preprocessing"])
    (emb,) = toy["enc"].run(None, {"image": x})
    run_dec, run_masks = _amg_runners(toy)
    calls = []
    engine = generate_masks(run_dec, emb, (96, 96), hw, amg, run_masks=run_masks, max_prompts=7,
                            progress=lambda d, t: calls.append((d, t)))
    ref = generate_masks(torch_decoder(sam), emb, (96, 96), hw, amg)
    total = -(-amg["points_per_side"] ** 2 // 20)
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert len(engine[0]) == len(ref[0]) > 0
    for a, b in zip(engine[0], ref[0]):
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.99
    np.testing.assert_allclose(engine[1], ref[1], atol=1e-4)
    np.testing.assert_allclose(engine[2], ref[2], atol=1e-2)
    with pytest.raises(ValueError, match="needs the sam_masks engine"):
        generate_masks(run_dec, emb, (96, 96), hw, amg)


def test_spec_errors():
    with pytest.raises(ValueError, match="multiple of the embedding grid"):
        sam_encoder.spec(100, 16, 64)
    with pytest.raises(ValueError, match="opt_prompts"):
        sam_decoder.spec(128, 16, 64, max_prompts=8, opt_prompts=16)
    with pytest.raises(ValueError, match="opt_prompts"):
        sam_masks.spec(16, 64, max_prompts=8, opt_prompts=16)
    s = sam_decoder.spec(128, 16, 64)
    assert s.dynamic_axes()["point_coords"] == {0: "prompts", 1: "points"}
    assert s.dynamic_axes()["image_embeddings"] == {}


def test_onnx_io_shapes(toy):
    dec, enc, masks = toy["dec"], toy["enc"], toy["masks"]
    assert [i.shape for i in dec.get_inputs()] == [[1, 64, 16, 16], ["prompts", "points", 2], ["prompts", "points"]]
    assert [o.shape for o in dec.get_outputs()] == [["prompts", 4], ["prompts", 4, 8], ["prompts", 256, 64]]
    assert [o.shape for o in masks.get_outputs()] == [["prompts", "outputs", 64, 64],
                                                      ["prompts", "outputs", "height", "width"],
                                                      ["prompts", "outputs"], ["prompts", "outputs"],
                                                      ["prompts", "outputs", 4]]
    assert enc.get_inputs()[0].shape == ["batch", 3, 128, 128]
