"""The whole ``released`` predictor on the toy bundle against the PyTorch reference written from the released code
(:meth:`edgeseg.export.refdiff_reference.TorchRefDiff.released_scores`: attention from the UNet's pre-softmax
logits, ``calc_diffattn``, ``get_cliphard``'s crops resized by their shortest side to the CLIP size with the aspect
kept and encoded with interpolated position embeddings, and the released soft branch, both of
:mod:`edgeseg.export.released_soft_reference`, 0.7 / 0.3 / 0.05 scores) given the same filtered SAM proposals and
target token: the chosen proposal equal in 100 % of >= 20 ToyWorld referring trials, every score within 1e-4; the
hard branch ran on non-square crops (clip_hard), not on crops squashed to CLIP's input."""

import numpy as np
import pytest

from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.train.data.refer import ReferWorld

pytest.importorskip("diffusers")
TRIALS = 22


def _trials():
    """(image, expression): 20 ToyWorld referring samples and two non-square crops (pad + crop-back paths)."""
    world = ReferWorld(2)
    out = [(world[i].scene.image, world[i].expression.text) for i in range(20)]
    out += [(np.ascontiguousarray(world[20].scene.image[:, 8:88]), world[20].expression.text),
            (np.ascontiguousarray(world[21].scene.image[12:84]), "the object on the left")]
    return out


def test_released_predictor_equals_the_torch_reference_of_the_released_code(refdiff_bundle):
    import torch

    from edgeseg.export.refdiff_reference import TorchRefDiff

    torch.set_num_threads(1)
    pred = RefDiffPredictor(refdiff_bundle, cache_dir=None)  # preset "released", the default
    assert pred.options["hard_resize"] == "shortest_side" and "clip_hard" in pred.scorer.COMPONENTS
    ref = TorchRefDiff("toy", preset="released")
    sizes = []  # the H x W of every clip_hard call
    run = pred.bundle.run

    def spy(name, feeds):
        if name == "clip_hard":
            sizes.append(feeds["crops"].shape[2:])
        return run(name, feeds)

    pred.bundle.run = spy
    same, rows = 0, []
    for image, text in _trials():
        res = pred.segment(image, text)
        want = ref(image, text, res.proposals.full(), res.target_token, res.parsed.target_phrase,
                   res.parsed.directions)
        np.testing.assert_allclose(res.attention, want["attention"], atol=1e-4, rtol=0, err_msg=text)
        for k in ("generative", "discriminative", "total"):
            np.testing.assert_allclose(res.scores[k], want[k], atol=1e-4, rtol=0, err_msg=f"{k}: {text!r}")
        same += res.best == want["best"]
        rows.append((len(res.proposals), res.best))
    assert len(rows) == TRIALS and same == TRIALS  # 100 % of trials
    assert sum(n > 1 for n, _ in rows) >= TRIALS // 2 and any(b > 0 for _, b in rows)  # real choices were made
    assert sum(h != w for h, w in sizes) >= TRIALS and all(min(h, w) == 96 for h, w in sizes)  # aspect kept
