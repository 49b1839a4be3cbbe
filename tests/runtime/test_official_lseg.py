"""A lang-seg checkpoint (random weights in the official Lightning layout, tiny config of the same architecture)
exported with ``edgeseg export lseg lseg_tiny_official:FILE`` runs through the runtime with the logits of the
PyTorch model (<= 1e-4), and its sliding-window inference on real photos equals lang-seg's evaluation
(MultiEvalModule at one scale) written in PyTorch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

skdata = pytest.importorskip("skimage.data")

from edgeseg.export.official_references import lseg_multieval  # noqa: E402
from edgeseg.runtime import load_predictor  # noqa: E402
from edgeseg.runtime.images import load_image, preprocess  # noqa: E402
from edgeseg.train.lseg_official import LSegOfficial, load_official_lseg, official_config  # noqa: E402
from edgeseg.train.official_weights import randomize, save_official_layout  # noqa: E402

TINY = "lseg_tiny_official"
LABELS = ["cup", "table", "saucer", "coffee", "wall"]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(bundle, the PyTorch model read back from the checkpoint) of a random tiny lang-seg checkpoint."""
    tmp = tmp_path_factory.mktemp("lseg_official")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LSegOfficial(official_config(TINY))
    ckpt = save_official_layout(randomize(model, seed=5), tmp / "demo_e200.ckpt", "lightning")
    out = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", "lseg", f"{TINY}:{ckpt}", "--out",
                          str(tmp / "bundle")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return tmp / "bundle", load_official_lseg(TINY, ckpt)


def _text(model, labels):
    import open_clip

    with torch.no_grad():
        return model.encode_text(open_clip.tokenize(labels))


def test_the_bundle_records_lang_segs_evaluation_settings(official):
    bundle, _ = official
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["preprocessing"] == {**m["preprocessing"], "recipe": "lseg-encoding", "base_size": 104,
                                  "window": [96, 96], "stride": [64, 64], "mean": [0.5] * 3, "std": [0.5] * 3}
    assert m["method_config"]["architecture"]["official"] == "isl-org/lang-seg LSegNet"
    assert m["source"]["weights_sha256"] and m["tokenizer"]["context_length"] == 77


def test_runtime_logits_equal_the_pytorch_model(official, tmp_path):
    bundle, model = official
    pred = load_predictor(bundle, cache_dir=tmp_path)
    photo = load_image(skdata.astronaut())
    state = pred.encode(photo, window=0)  # one resized image at the encoder's input
    text = pred.text.embed(LABELS, pred.template)
    feeds = {"pixel_embeds": state.encoded["pixel_embeds"], "text_embeds": text}
    logits = pred.bundle.run("lseg_head", feeds)["logits"]
    x = torch.from_numpy(preprocess(photo, pred.bundle.preprocessing))
    with torch.no_grad():
        ref = model(x, _text(model, LABELS)).numpy()
    assert np.abs(text - _text(model, LABELS).numpy()).max() < 1e-5
    assert logits.shape == ref.shape == (1, 5, 96, 96)
    assert np.abs(logits - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ["coffee", "astronaut", "text"])  # 400 x 600, 512 x 512, gray 172 x 448
def test_sliding_windows_equal_lang_segs_evaluation(official, tmp_path, name):
    bundle, model = official
    pred = load_predictor(bundle, cache_dir=tmp_path)
    photo = load_image(getattr(skdata, name)())
    res = pred.segment(photo, LABELS, full_probabilities=True)
    st = pred._local.state
    assert st.tiling.mode == "pad" and st.tiling.canvas[1 if photo.shape[1] >= photo.shape[0] else 0] == 104
    ref, blended = lseg_multieval(model, photo, _text(model, LABELS), base_size=104, crop=96)
    assert res.label_map.shape == photo.shape[:2] and res.probabilities.shape == (5,) + photo.shape[:2]
    assert np.abs(res.probabilities - torch.softmax(ref, 1)[0].numpy()).max() <= 1e-4
    coarse = pred.predict(LABELS, state=st)  # default: probabilities at the blended canvas
    assert np.abs(coarse.probabilities - torch.softmax(blended, 1)[0].numpy()).max() <= 1e-4
    assert np.mean(res.label_map == ref.argmax(1)[0].numpy()) > 0.999


def test_a_smaller_stride_batches_more_windows(official, tmp_path):
    bundle, model = official
    pred = load_predictor(bundle, cache_dir=tmp_path)
    photo = load_image(skdata.astronaut())
    res = pred.segment(photo, LABELS, stride=16)  # 104 x 104 canvas: 2 x 2 windows at 64, 3 x 3 at 16
    assert len(pred._local.state.tiling) == 4 and pred.encode(photo, stride=4).tiling.describe()["tiles"] == 9
    assert res.label_map.shape == (512, 512)


def test_a_mismatching_file_is_refused_at_export(tmp_path):
    bad = save_official_layout({"scratch.head1.weight": torch.zeros(1)}, tmp_path / "x.ckpt", "lightning")
    out = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", "lseg", f"{TINY}:{bad}", "--out",
                          str(tmp_path / "b")], capture_output=True, text=True)
    assert out.returncode == 1 and not (tmp_path / "b").exists()
    assert "does not fit the lang-seg LSeg 'lseg_tiny_official' architecture: keys 251 missing (first: " \
           "clip_pretrained.positional_embedding" in out.stderr
    assert "has no config.json" not in out.stderr
