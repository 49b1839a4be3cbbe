"""edgeseg.train.sam / train_sam: configs, builders, loaders, the traceable decoder path, the bundled toy SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from edgeseg.train.checkpoint import load_checkpoint  # noqa: E402
from edgeseg.train.sam import (SAM_CONFIGS, SAM_PREPROCESSING, build_sam, embed_points, list_models,  # noqa: E402
                               load_sam, predict_masks)


def test_configs_and_build():
    torch.set_num_threads(1)
    assert list_models() == ["toy-tiny", "vit_b", "vit_h"]
    assert SAM_PREPROCESSING["vit_h"]["img_size"] == 1024 and SAM_CONFIGS["vit_h"]["encoder_depth"] == 32
    sam = build_sam("toy-tiny", seed=3)
    again = build_sam("toy-tiny", seed=3)
    for (k, a), b in zip(sam.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # seeded
    with torch.no_grad():
        emb = sam.image_encoder(torch.randn(1, 3, 128, 128))
    assert emb.shape == (1, 64, 16, 16)
    with pytest.raises(ValueError, match="unknown SAM config 'vit_x'"):
        build_sam("vit_x")


def test_embed_points_and_predict_masks_match_segment_anything():
    sam = build_sam("toy-tiny", seed=1)
    pe = sam.prompt_encoder
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 1, 2, generator=g) * 128
    with torch.no_grad():
        ref_sparse, dense = pe(points=(pts, torch.tensor([[1.0], [0.0], [1.0]])), boxes=None, masks=None)
        coords = torch.cat([pts, torch.zeros(3, 1, 2)], dim=1)
        sparse = embed_points(pe, coords, torch.tensor([[1.0, -1], [0.0, -1], [1.0, -1]]))
        torch.testing.assert_close(sparse, ref_sparse)
        box = torch.tensor([[5.0, 6.0, 70.0, 80.0]])
        torch.testing.assert_close(embed_points(pe, box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]])),
                                   pe(points=None, boxes=box, masks=None)[0])
        emb = torch.randn(1, 64, 16, 16, generator=g)
        ref_m, ref_i = sam.mask_decoder.predict_masks(emb, pe.get_dense_pe(), ref_sparse, dense)
        m, i = predict_masks(sam.mask_decoder, emb.expand(3, -1, -1, -1), pe.get_dense_pe(), sparse,
                             pe.no_mask_embed.weight.reshape(1, -1, 1, 1))
    assert m.shape == (3, 4, 64, 64) and i.shape == (3, 4)
    torch.testing.assert_close(m, ref_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(i, ref_i, atol=1e-5, rtol=1e-5)


def test_load_sam_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sam_vit_h"):
        load_sam(f"vit_h:{tmp_path / 'missing.pth'}")
    wrong = tmp_path / "toy.pth"
    torch.save(build_sam("toy-tiny").state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit SAM 'vit_b'"):
        load_sam(f"vit_b:{wrong}")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sam(tmp_path / "no_such_checkpoint")


def test_official_file_loads_strict(tmp_path):
    """A 'vit_*:/path' state dict that fits loads strictly (the toy architecture stands in for the 2.5 GB file
    via a patched config table)."""
    from edgeseg.train import sam as sam_mod

    ref = build_sam("toy-tiny", seed=7)
    path = tmp_path / "sam_toy.pth"
    torch.save({"model": ref.state_dict()}, path)  # also accepts {"model": state}
    mp = pytest.MonkeyPatch()
    mp.setitem(sam_mod.SAM_CONFIGS, "vit_b", SAM_CONFIGS["toy-tiny"])
    mp.setitem(sam_mod.SAM_PREPROCESSING, "vit_b", SAM_PREPROCESSING["toy-tiny"])
    try:
        sam, cfg = load_sam(f"vit_b:{path}")
    finally:
        mp.undo()
    assert cfg["name"] == "vit_b"
    for k, v in ref.state_dict().items():
        assert torch.equal(sam.state_dict()[k], v), k


def test_bundled_sam_toy_quality():
    """The committed toy SAM: recorded metrics (100 held-out objects, 60 scenes) and a quick re-measurement.
    Bars are what the 29-minute CPU training reached (point mIoU 0.68, AMG recall 0.62), below the issue's
    0.75 / 0.8 targets."""
    from edgeseg.train.train_sam import SAMRecipe, evaluate_sam

    torch.set_num_threads(1)
    sam, cfg = load_sam("sam_toy")
    assert cfg["preprocessing"]["img_size"] == 128 and cfg["mask_threshold"] == 0.0
    m = cfg["metrics"]
    assert m["point_objects"] == 100 and m["point_miou"] >= 0.65
    assert m["amg_recall"] >= 0.6 and m["amg"]["top_k"] == 10
    quick = evaluate_sam(sam, cfg, SAMRecipe(eval_objects=30, eval_scenes=8, amg=dict(m["amg"])))
    assert quick["point_miou"] >= 0.6 and quick["amg_recall"] >= 0.45
    _, raw = load_checkpoint("sam_toy", "sam")
    assert raw["storage_dtype"] == "float16"
    from edgeseg.train.checkpoint import resolve_checkpoint

    assert (resolve_checkpoint("sam_toy") / "model.safetensors").stat().st_size < 8e6
    with pytest.raises(ValueError, match="not a SAM one"):
        load_checkpoint("clip_toy", "sam")


def test_short_training_run_writes_a_loadable_checkpoint(tmp_path):
    from edgeseg.train.train_sam import SAMRecipe, interior_point, train_sam

    torch.set_num_threads(1)
    lines: list[str] = []
    metrics = train_sam(tmp_path / "sam", SAMRecipe(steps=2, batch_images=2, prompts_per_image=4,
                                                    eval_objects=3, eval_scenes=1), log=lines.append)
    assert any(line.startswith("step 0 loss") for line in lines)
    assert metrics["point_objects"] == 3 and 0.0 <= metrics["point_miou"] <= 1.0
    sam, cfg = load_sam(tmp_path / "sam")
    assert cfg["metrics"] == metrics and cfg["recipe"]["steps"] == 2
    assert json.loads((tmp_path / "sam" / "config.json").read_text())["kind"] == "sam"
    m = np.zeros((9, 9), bool)
    m[1:8, 2:7] = True
    x, y = interior_point(m)
    assert x == 4.0 and 3.0 <= y <= 5.0  # farthest from the border
