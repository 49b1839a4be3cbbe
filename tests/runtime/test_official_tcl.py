"""A TCL checkpoint in the released layout (random weights, tiny config of the same architecture) exported with
``edgeseg export tcl tcl_tiny_official:FILE`` runs through the runtime in TCL's official order and with its
constants, equal to TCL's evaluation written in PyTorch (mmseg resize + slide_inference around
generate_masks with PAMR and the 0.3 / 0.7 MaskCLIP mix) on real photos; mix-first stays a named option."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

from edgeseg.export.official_references import tcl_generate_masks, tcl_slide  # noqa: E402
from edgeseg.runtime import TCLPredictor  # noqa: E402
from edgeseg.runtime.images import load_image  # noqa: E402
from edgeseg.train.official_weights import randomize, save_official_layout  # noqa: E402
from edgeseg.train.tcl_official import TCLOfficial, load_official_tcl  # noqa: E402

TINY = "tcl_tiny_official"
LABELS = ["cup", "table", "saucer", "coffee", "wall"]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tcl_official")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TCLOfficial(TINY)
    state = randomize(model, seed=11)
    state["masker.sim2mask.w"] = torch.tensor(12.0)  # masks that depend on the text (as trained ones do)
    ckpt = save_official_layout(state, tmp / "tcl.pth", "tcl")
    out = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", "tcl", f"{TINY}:{ckpt}", "--out",
                          str(tmp / "bundle")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return tmp / "bundle", load_official_tcl(TINY, ckpt)


def _text(model, labels):
    import open_clip

    with torch.no_grad():
        return model.encode_text(open_clip.tokenize([f"a photo of a {x}." for x in labels]))


def test_the_bundle_records_tcls_evaluation_settings(official):
    bundle, _ = official
    m = json.loads((bundle / "manifest.json").read_text())
    p, c = m["preprocessing"], m["method_config"]
    assert (p["recipe"], p["scale"], p["window"], p["stride"]) == ("mmseg-rescale", [292, 64], [64, 64], [32, 32])
    assert p["mean"] == [0.485, 0.456, 0.406] and p["std"] == [0.229, 0.224, 0.225]  # mmseg's img_norm_cfg
    assert (c["order"], c["kp_weight"], c["bg_threshold"]) == ("official", 0.3, 0.4)
    assert c["pamr"]["iterations"] == 10 and c["pamr"]["dilations"] == [1, 2, 4, 8, 12, 24]
    assert [o["name"] for o in m["components"]["tcl_head"]["outputs"]] == ["tcl_masks", "kp_masks"]


def test_one_window_equals_generate_masks(official, tmp_path):
    bundle, model = official
    pred = TCLPredictor(bundle, cache_dir=tmp_path)
    photo = load_image(skdata.chelsea())
    state = pred.encode(photo, window=0)
    res = pred.predict(LABELS, state=state)
    with torch.no_grad():
        ref = tcl_generate_masks(model, torch.from_numpy(state.input.copy()), _text(model, LABELS))[0].numpy()
    assert res.probabilities.shape == ref.shape == (5, 64, 64)
    assert np.abs(res.probabilities - ref).max() <= 1e-4


@pytest.mark.parametrize("name, background", [("coffee", False), ("text", True), ("rocket", False)])
def test_sliding_windows_equal_tcls_evaluation(official, tmp_path, name, background):
    """coffee 400 x 600 (2 windows), text: gray 172 x 448 (5 windows: two encoder batches), rocket 427 x 640."""
    bundle, model = official
    pred = TCLPredictor(bundle, cache_dir=tmp_path)
    photo = load_image(getattr(skdata, name)())
    res = pred.segment(photo, LABELS, background=background)
    st = pred._local.state
    assert st.tiling.mode == "shift" and min(st.tiling.canvas) == 64
    ref, blended = tcl_slide(model, photo, _text(model, LABELS), scale=(292, 64), crop=64, stride=32)
    assert np.abs(res.probabilities[:5] - blended[0].numpy()).max() <= 1e-4
    want = ref[0].numpy()
    if background:  # TCLSegInference: a constant 0.4 channel (first there; last here)
        want = np.concatenate([want, np.full((1,) + want.shape[1:], 0.4, np.float32)])
    assert np.mean(res.label_map == want.argmax(0)) > 0.998


def test_mix_first_is_a_named_option_and_differs(official, tmp_path):
    bundle, _ = official
    photo = load_image(skdata.coffee())
    a = TCLPredictor(bundle, cache_dir=tmp_path).segment(photo, LABELS)
    b = TCLPredictor(bundle, cache_dir=tmp_path, order="mix-first").segment(photo, LABELS)
    assert a.probabilities.shape == b.probabilities.shape and not np.allclose(a.probabilities, b.probabilities)
    with pytest.raises(ValueError, match=r"order must be one of \['official', 'mix-first'\], got 'pamr-last'"):
        TCLPredictor(bundle, cache_dir=tmp_path, order="pamr-last")
