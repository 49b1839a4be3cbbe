"""Automatic masks through the exported engines (ONNX ``sam_decoder`` + ``sam_masks``, host NMS / top-k) against
segment_anything's own ``SamAutomaticMaskGenerator``: the trained toy SAM on ToyWorld scenes, and the full-size
ViT-B decoder (random weights, random image embedding, thresholds relaxed so masks survive)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export import sam_decoder, sam_masks  # noqa: E402
from edgeseg.export.refdiff_sam import sam_components  # noqa: E402
from edgeseg.runtime.sam_auto import generate_masks, preprocess_shape, sam_preprocess  # noqa: E402


def _engines(checkpoint: str, tmp_path) -> tuple:
    """(sam model, cfg info, run_decoder, run_masks) with both graphs exported to ``tmp_path`` and run on ORT."""
    comps, info = sam_components(checkpoint)
    runs = []
    for name, module in ((sam_decoder.NAME, sam_decoder), (sam_masks.NAME, sam_masks)):
        wrapper, spec = comps[name]
        path = tmp_path / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, module.example_inputs(spec, "opt", batch=2), str(path),
                              input_names=[t.name for t in spec.inputs], output_names=spec.output_names,
                              dynamic_axes=spec.dynamic_axes(), opset_version=spec.opset, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        runs.append(lambda f, s=sess, n=spec.output_names: dict(zip(n, s.run(n, f))))
    return comps, info, runs[0], runs[1]


def _reference(sam, image: np.ndarray, amg: dict, sam_iou: float, embedding: np.ndarray | None = None) -> list:
    """segment_anything's generator with the same settings (``sam_iou``: its pred_iou_thresh, 0 = no filter),
    then the bundle's extra filters (area limits, top-k by area); ``embedding`` replaces the encoder."""
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam, points_per_side=amg["points_per_side"], points_per_batch=amg["batch"],
                                    pred_iou_thresh=sam_iou, stability_score_thresh=amg["stability_score_thresh"],
                                    stability_score_offset=amg["stability_offset"],
                                    box_nms_thresh=amg["box_nms_thresh"], min_mask_region_area=0)
    if embedding is not None:
        pred = gen.predictor

        def set_image(img, image_format="RGB"):
            pred.reset_image()
            pred.original_size = img.shape[:2]
            pred.input_size = preprocess_shape(*img.shape[:2], sam.image_encoder.img_size)
            pred.features = torch.from_numpy(embedding)
            pred.is_image_set = True

        pred.set_image = set_image
    with torch.no_grad():
        anns = gen.generate(image)
    h, w = image.shape[:2]
    anns = [a for a in anns if amg["min_mask_area"] <= a["area"] <= amg["max_mask_fraction"] * h * w]
    anns.sort(key=lambda a: -a["area"])
    return anns[:amg["top_k"]] if amg["top_k"] > 0 else anns


def _assert_same(masks: np.ndarray, iou: np.ndarray, stab: np.ndarray, ref: list) -> None:
    assert len(masks) == len(ref) > 0
    for r in ref:
        seg = r["segmentation"]
        scores = [(m & seg).sum() / max((m | seg).sum(), 1) for m in masks]
        j = int(np.argmax(scores))
        assert scores[j] >= 0.99
        assert iou[j] == pytest.approx(r["predicted_iou"], abs=1e-4)
        assert stab[j] == pytest.approx(r["stability_score"], abs=1e-2)


def test_toy_engines_match_segment_anything_generator(tmp_path):
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig
    from edgeseg.train.sam import load_sam

    torch.set_num_threads(1)
    sam, cfg = load_sam("sam_toy")
    comps, info, run_dec, run_masks = _engines("sam_toy", tmp_path)
    amg = dict(info["amg"], max_mask_fraction=1.0)
    enc = comps["sam_encoder"][0]
    world = ToyWorld("seen", 0, ToyWorldConfig(size=96))
    for index in (3, 11):
        image = world[index].image
        x, hw = sam_preprocess(image, info["sam_preprocessing"])
        with torch.no_grad():
            emb = enc(torch.from_numpy(x)).numpy()
        got = generate_masks(run_dec, emb, image.shape[:2], hw, amg, run_masks=run_masks)
        assert got[0].dtype == bool and got[0].shape[1:] == image.shape[:2]
        _assert_same(*got, _reference(sam, image, amg, amg["pred_iou_thresh"]))


def test_full_size_vit_b_engines_match_segment_anything_generator(tmp_path):
    """ViT-B's decoder at full size (1024 frame, 64 x 64 embedding, 256 x 256 low-res masks) on a 120 x 160
    image; random weights predict IoUs near 0 and logits within +-1, so the IoU filter is off (SAM: 0; here
    -1, below every prediction), stability is kept at any value and its offset is 0.05."""
    from edgeseg.train.sam import load_sam

    torch.set_num_threads(2)
    sam, _ = load_sam("vit_b")
    _, info, run_dec, run_masks = _engines("vit_b", tmp_path)
    amg = dict(info["amg"], points_per_side=4, batch=8, pred_iou_thresh=-1.0, stability_score_thresh=0.0,
               stability_offset=0.05, min_mask_area=0, top_k=0, max_mask_fraction=1.0)
    image = np.zeros((120, 160, 3), np.uint8)
    emb = np.random.default_rng(0).normal(size=(1, 256, 64, 64)).astype(np.float32)
    got = generate_masks(run_dec, emb, image.shape[:2], preprocess_shape(120, 160, 1024), amg, run_masks=run_masks,
                         max_prompts=3)
    _assert_same(*got, _reference(sam, image, amg, 0.0, embedding=emb))
