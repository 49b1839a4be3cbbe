"""The proposal stage on the exported toy Ref-Diff bundle: per-mask work in the ``sam_masks`` engine, equal to
the numpy post-processing; progress callbacks; bundles without ``sam_masks`` warned about, never silently."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeseg.runtime.refdiff_proposals import ProposalGenerator, StderrProgress  # noqa: E402
from edgeseg.runtime.sam_auto import generate_masks  # noqa: E402


@pytest.fixture(scope="module")
def image():
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig

    return ToyWorld("seen", 0, ToyWorldConfig(size=96))[7].image


def test_bundle_runs_the_masks_engine_with_progress(refdiff_bundle, image):
    calls = []
    gen = ProposalGenerator(refdiff_bundle, cache_size=0, progress=lambda d, t: calls.append((d, t)))
    assert gen.engine_masks and "sam_masks" in gen.COMPONENTS
    props = gen(image)
    n = gen.amg["points_per_side"] ** 2
    total = -(-n // gen.amg["batch"])
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert len(props) > 0 and props.masks.dtype == bool and props.masks.shape[1:] == image.shape[:2]
    assert (np.diff(props.masks.sum((1, 2))) <= 0).all()  # largest first
    assert (props.predicted_iou > gen.amg["pred_iou_thresh"]).all()
    assert (props.stability >= gen.amg["stability_score_thresh"]).all()


def test_engine_masks_equal_the_numpy_post_processing(refdiff_bundle, image):
    """Same decoder run, the per-mask work in the engine vs in numpy on the engine's own low-res logits."""
    gen = ProposalGenerator(refdiff_bundle, cache_size=0)
    emb, input_hw = gen.embed(image)
    masks, iou, stab = gen.masks_from_embeddings(emb, image.shape[:2], input_hw)
    rows = np.zeros((1, 64), np.float32)  # any size: only low_res_masks is read

    step = int(gen.bundle.spec("sam_masks").input("image_tokens").max[0])

    def legacy_decoder(feeds):  # the decoder outputs of bundles exported before sam_masks, from the engines
        out = gen.bundle.run("sam_decoder", feeds)
        low = [gen.bundle.run("sam_masks", {"image_tokens": out["image_tokens"][s:s + step],
                                            "hyper_in": out["hyper_in"][s:s + step], "resize_rows": rows,
                                            "resize_cols": rows, "thresholds": np.zeros(3, np.float32)})
               ["low_res_masks"] for s in range(0, len(out["hyper_in"]), step)]
        return {"low_res_masks": np.concatenate(low), "iou_predictions": out["iou_predictions"]}

    ref = generate_masks(legacy_decoder, emb, image.shape[:2], input_hw, gen.amg, gen.sam_preprocessing["img_size"])
    assert len(masks) == len(ref[0]) > 0
    for a, b in zip(masks, ref[0]):
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.99
    np.testing.assert_allclose(iou, ref[1], atol=1e-6)
    np.testing.assert_allclose(stab, ref[2], atol=1e-3)


def test_bundle_without_masks_engine_is_warned_about(refdiff_bundle, tmp_path, image):
    old = tmp_path / "old"
    shutil.copytree(refdiff_bundle, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["components"]["sam_masks"]
    (old / "manifest.json").write_text(json.dumps(man))
    (old / "sam_masks.onnx").unlink()
    with pytest.warns(UserWarning, match=r"has no 'sam_masks' component: .* re-export it with edgeseg export refdiff"):
        gen = ProposalGenerator(old, cache_size=0)
    assert not gen.engine_masks and "sam_masks" not in gen.COMPONENTS
    # this bundle's decoder is today's (no low_res_masks): refused with the fix, not run half-way
    with pytest.raises(ValueError, match="needs the sam_masks engine"):
        gen(image)


def test_progress_option_and_stderr_lines():
    with pytest.raises(ValueError, match="progress must be None, a bool or a callable"):
        ProposalGenerator.__init__(object.__new__(ProposalGenerator), "x", progress="yes")  # type: ignore[arg-type]
    out = io.StringIO()
    quiet = StderrProgress("sam proposals", after_s=60.0, stream=out)
    quiet(1, 2), quiet(2, 2)
    assert out.getvalue() == ""  # short runs stay quiet
    loud = StderrProgress("sam proposals", after_s=0.0, stream=out)
    loud(1, 2), loud(2, 2)
    lines = out.getvalue()
    assert "\rsam proposals: 1/2 point batches (" in lines and lines.endswith(" s)\n")
