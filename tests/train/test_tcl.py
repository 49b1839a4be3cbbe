"""TCL training pieces: one smoke per loss term (finite, gradient to the trainable parts, moves the expected
way), the model at initialisation equals MaskCLIP, Gumbel-sigmoid, a short training run and the checkpoint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.train.clip import CLIP_WEIGHTS, encode_image_features, load_clip
from edgeseg.train.data.toyworld import ToyWorld
from edgeseg.train.tcl import LOSS_WEIGHTS, TCL, TCLConfig, gumbel_sigmoid, tv_loss
from edgeseg.train.train_clip import images_to_tensor
from edgeseg.train.train_tcl import TCLRecipe, TextBank, load_tcl, train_tcl

TEXTS = ["circle", "sand", "a red star", "water"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    clip, _ = load_clip("clip_toy")
    model = TCL(TCLConfig(), clip).train()
    world = ToyWorld("all", 5)
    w = CLIP_WEIGHTS["toy-tiny"]
    images = images_to_tensor(np.stack([world[i].image for i in range(4)]), w["mean"], w["std"])
    text = TextBank(clip, 32)(TEXTS)
    return model, images, text


def _terms(model, images, text, targets=None, seed=0):
    return model.losses(images, text, targets, torch.Generator().manual_seed(seed))


def _trainable_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if not n.startswith("clip.") and p.grad is not None}


@pytest.mark.parametrize("term", sorted(LOSS_WEIGHTS))
def test_each_loss_term_is_finite_and_reaches_the_trainable_parts(setup, term):
    model, images, text = setup
    loss = _terms(model, images, text)[term]
    assert loss.ndim == 0 and torch.isfinite(loss)
    grads = _trainable_grads(model, loss)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(("masker_", "decoder", "image_proj"))), \
        f"{term}: no gradient reaches the masker / decoder"
    assert not any(p.grad is not None for p in model.clip.parameters()), "the CLIP must stay frozen"


def test_contrastive_terms_prefer_the_true_texts(setup):
    """With the true text of each image the two TCL InfoNCE terms are lower than with the texts shuffled."""
    model, images, _ = setup
    world = ToyWorld("all", 5)
    bank = TextBank(model.clip, 32)
    true = bank([world[i].stuff for i in range(4)])  # stuff words: the frozen CLIP knows them well
    wrong = true.roll(1, 0)
    with torch.no_grad():
        good = [_terms(model, images, true, seed=s) for s in range(3)]
        bad = [_terms(model, images, wrong, seed=s) for s in range(3)]
    for term in ("image_tcl", "feature_tcl"):
        assert np.mean([g[term] for g in good]) < np.mean([b[term] for b in bad]), term


def test_area_prior_moves_with_the_mask_area(setup):
    model, images, text = setup
    with torch.no_grad():
        b0 = model.b.clone()
        model.b.fill_(30.0)  # every mask ~1: |1 - 0.4| + |1 - 0|
        full = _terms(model, images, text)["area"]
        model.b.fill_(-30.0)  # every mask ~0: |0 - 0.4| + 0
        empty = _terms(model, images, text)["area"]
        model.b.copy_(b0)
    assert full == pytest.approx(1.6, abs=1e-3) and empty == pytest.approx(0.4, abs=1e-3)


def test_tv_loss_measures_roughness(setup):
    flat = torch.ones(1, 2, 8, 8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * torch.ones(1, 2, 8, 8)
    assert tv_loss(flat) == 0 and tv_loss(checker) == pytest.approx(2.0)
    model, images, text = setup
    with torch.no_grad():
        smooth = _terms(model, images * 0, text)["tv"]  # a blank image: flat embeddings and masks
        busy = _terms(model, images, text)["tv"]
    assert smooth < busy


def test_untrained_model_is_maskclip(setup):
    """Gates start at 0 and the projection is CLIP's: grounding embeddings = MaskCLIP's, nearest-upsampled."""
    model, images, _ = setup
    with torch.no_grad():
        ground, dense = TCL(TCLConfig(), model.clip).eval().encode(images)
        feats, _ = encode_image_features(model.clip.visual, images)
    ref = F.normalize(feats.dense, dim=1)
    assert ground.shape == (4, 128, 24, 24) and dense.shape == (4, 128, 12, 12)
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ground, F.interpolate(ref, scale_factor=2.0, mode="nearest"), atol=1e-4, rtol=0)


def test_gumbel_sigmoid_is_hard_with_a_soft_gradient():
    logits = torch.tensor([-20.0, 0.0, 20.0], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    hard = gumbel_sigmoid(logits, 1.0, g)
    assert set(hard.tolist()) <= {0.0, 1.0} and hard[0] == 0 and hard[2] == 1
    hard.sum().backward()
    assert logits.grad[1] > 0
    samples = torch.stack([gumbel_sigmoid(torch.zeros(2000), 1.0, g) for _ in range(2)])
    assert 0.45 < samples.mean() < 0.55  # P(hard = 1) = sigmoid(0)


def test_short_training_writes_a_small_checkpoint_that_loads(tmp_path):
    seen = []
    metrics = train_tcl(tmp_path / "tcl", recipe=TCLRecipe(steps=3, batch=4, pool=8, warmup=1, eval_n=0),
                        on_step=lambda s, losses: seen.append(losses))
    assert len(seen) == 3 and all(np.isfinite(v) for step in seen for v in step.values())
    assert set(seen[0]) == {"total", *LOSS_WEIGHTS}
    model, cfg = load_tcl(tmp_path / "tcl")
    assert cfg["kind"] == "tcl" and cfg["clip"]["checkpoint"] == "clip_toy" and "final_total" in metrics
    assert (tmp_path / "tcl" / "model.safetensors").stat().st_size < 3_000_000, "stores the frozen CLIP too"
    out = model(torch.randn(2, 3, 96, 96), F.normalize(torch.randn(5, 128), dim=-1))
    assert out.shape == (2, 5, 24, 24) and 0 <= out.min() and out.max() <= 1


def test_load_refuses_other_checkpoints():
    with pytest.raises(ValueError, match="not a TCL one"):
        load_tcl("clip_toy")


def test_full_size_tcl_takes_user_clip_weights_by_path(tmp_path):
    from edgeseg.export.tcl_bundle import tcl_components

    with pytest.raises(FileNotFoundError, match="CLIP weights .*missing.pt' not found"):
        tcl_components(f"ViT-B-16:{tmp_path / 'missing.pt'}")
