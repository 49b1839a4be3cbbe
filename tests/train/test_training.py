"""Training smoke: losses fall over a few steps; checkpoints round-trip; real open_clip weights load."""

import numpy as np
import pytest
import torch

from edgeseg.train.checkpoint import load_checkpoint
from edgeseg.train.clip import create_clip, encode_image_features, list_models
from edgeseg.train.train_clip import ClipRecipe, train_clip
from edgeseg.train.train_lseg import LSegRecipe, load_lseg, train_lseg


def _falls(losses, k=3):
    return np.mean(losses[-k:]) < np.mean(losses[:k])


def test_clip_then_lseg_training_losses_fall(tmp_path):
    clip_losses, lseg_losses = [], []
    # A pool as small as the batch: the same scenes every step, so the loss must fall within a few steps.
    train_clip(tmp_path / "clip", ClipRecipe(steps=12, batch=16, pool=16, warmup=1, lr=2e-3, eval_n=0, eval_every=0),
               on_step=lambda s, l: clip_losses.append(l))
    train_lseg(tmp_path / "lseg", tmp_path / "clip", LSegRecipe(steps=10, batch=8, pool=8, warmup=1, eval_n=0),
               on_step=lambda s, l: lseg_losses.append(l))
    assert _falls(clip_losses), clip_losses
    assert _falls(lseg_losses), lseg_losses
    model, clip, cfg = load_lseg(tmp_path / "lseg")
    assert cfg["kind"] == "lseg" and cfg["text_encoder"]["frozen"]
    state, _ = load_checkpoint(tmp_path / "lseg")
    assert all(v.dtype != torch.float64 for v in state.values())
    logits = model(torch.randn(1, 3, 96, 96), torch.nn.functional.normalize(torch.randn(5, 128), dim=-1))
    assert logits.shape == (1, 5, 96, 96)


def test_checkpoint_hash_mismatch_is_refused(tmp_path):
    train_clip(tmp_path / "clip", ClipRecipe(steps=1, batch=4, pool=4, warmup=1, eval_n=0, eval_every=0))
    with open(tmp_path / "clip" / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_checkpoint(tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match="bundled name"):
        load_checkpoint(tmp_path / "nowhere")


def test_open_clip_checkpoint_file_loads(tmp_path):
    """A user's open_clip checkpoint (here: saved from a random-init model of the same config) loads."""
    src = create_clip("toy-tiny")
    path = tmp_path / "user_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    loaded = create_clip("toy-tiny", path)
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="does not fit"):
        create_clip("ViT-B-16", path)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("toy-tiny", tmp_path / "missing.pt")
    assert {"ViT-B-16", "toy-tiny"} <= set(list_models())


def test_dense_features_follow_maskclip_value_path():
    model = create_clip("toy-tiny")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats, taps = encode_image_features(model.visual, x, hooks=(1, 4))
        assert torch.allclose(feats.pooled, model.encode_image(x), atol=1e-5)
    assert feats.dense.shape == (2, 128, 12, 12) and len(taps) == 2


def test_clip_loss_terms_prefer_the_truth():
    """Each CLIP training term is lower for matching image/text features than for shuffled ones."""
    import torch.nn.functional as F

    from edgeseg.train.clip import clip_loss
    from edgeseg.train.data.toyworld import CLASSES
    from edgeseg.train.train_clip import DENSE_LABELS, dense_loss, vocab_loss

    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(len(DENSE_LABELS), 32, generator=g), dim=-1)
    semantic = np.full((2, 16, 16), CLASSES.index("grass"), np.uint8)
    semantic[0, :8] = CLASSES.index("circle")
    semantic[1, :, :8] = CLASSES.index("hexagon")  # unseen: ignored by the dense term
    label = {i: DENSE_LABELS.index(CLASSES[v]) for v in np.unique(semantic) for i in [v] if CLASSES[v] in DENSE_LABELS}
    centres = semantic[:, 2::4, 2::4]
    good = torch.zeros(2, 32, 4, 4)
    for b in range(2):
        for y in range(4):
            for x in range(4):
                good[b, :, y, x] = text[label.get(centres[b, y, x], 0)]
    assert dense_loss(good, text, semantic, 4) < dense_loss(good.flip(2), text, semantic, 4)
    only_unseen = np.full((1, 16, 16), CLASSES.index("hexagon"), np.uint8)
    assert dense_loss(good[:1], text, only_unseen, 4).item() == 0.0
    img = F.normalize(torch.randn(4, 32, generator=g), dim=-1)
    eye = torch.eye(4)
    assert vocab_loss(img, img, eye) < vocab_loss(img, img.roll(1, 0), eye)
    scale = torch.tensor(2.0)
    assert clip_loss(img, img, scale, eye) < clip_loss(img, img.roll(1, 0), scale, eye)
    two_pos = eye.clone()
    two_pos[0, 1] = 1  # text 1 is also true of image 0: both directions stay finite and normalized
    assert torch.isfinite(clip_loss(img, img, scale, two_pos))
