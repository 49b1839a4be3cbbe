"""IFSeg training from words alone: artificial batches are right, the loss trains the decoder, the untrained
decoder is MaskCLIP, checkpoints round-trip and bad requests fail clearly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.train.ifseg import IFSegConfig, IFSegDecoder, artificial_batch, ifseg_loss
from edgeseg.train.train_ifseg import IFSegRecipe, load_ifseg, train_ifseg

D, GRID, OUT = 16, (12, 12), (96, 96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, denormals flushed (as training runs): several threads on a busy 2-core CPU were ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vocab():
    return F.normalize(torch.randn(10, D, generator=torch.Generator().manual_seed(0)), dim=-1)


def small_decoder(layers: int = 1) -> IFSegDecoder:
    torch.manual_seed(0)
    return IFSegDecoder(IFSegConfig(embed_dim=D, width=32, layers=layers, heads=4))


def test_artificial_batch_shapes_and_targets(vocab):
    g = torch.Generator().manual_seed(1)
    feats, text, target = artificial_batch(vocab, 6, 4, 5, GRID, OUT, g)
    assert feats.shape == (6, D, *GRID) and text.shape == (4, D) and target.shape == (6, *OUT)
    assert target.dtype == torch.int64 and 0 <= target.min() and target.max() < 4
    assert torch.allclose(feats.norm(dim=1), torch.ones(6, *GRID), atol=1e-5)
    assert all(any(torch.allclose(t, v) for v in vocab) for t in text), "categories come from the vocabulary"
    # without augmentation every feature pixel is exactly the embedding of the target cell at its corner
    ids = torch.einsum("bdhw,cd->bchw", feats, text).argmax(1)
    assert torch.equal(ids, target[:, ::8, ::8])
    assert torch.allclose(feats, text[ids].permute(0, 3, 1, 2), atol=1e-6)
    # cells are rectangles of a U x V grid with U, V <= 5: at most 5 distinct rows of the target
    for t in target:
        assert torch.unique(t, dim=0).shape[0] <= 5 and torch.unique(t, dim=1).shape[1] <= 5


def test_augmentations_move_features_but_keep_unit_norm(vocab):
    feats, text, target = artificial_batch(vocab, 4, 3, 6, GRID, OUT, torch.Generator().manual_seed(2), noise=1.0,
                                           offset=0.5, mix=0.5)
    clean = text[target[:, ::8, ::8]].permute(0, 3, 1, 2)  # the embedding of each pixel's own category
    cos = (clean * feats).sum(1)
    assert cos.max() < 0.9999 and cos.mean() > 0.3
    assert torch.allclose(feats.norm(dim=1), torch.ones(4, *GRID), atol=1e-5)


def test_bad_category_count(vocab):
    with pytest.raises(ValueError, match="num_categories must be in 1..10, got 11"):
        artificial_batch(vocab, 1, 11, 3, GRID, OUT, torch.Generator())


def test_cross_entropy_is_finite_with_gradient_everywhere(vocab):
    dec = small_decoder()
    feats, text, target = artificial_batch(vocab, 4, 5, 12, GRID, OUT, torch.Generator().manual_seed(3), noise=1.0)
    with torch.no_grad():  # the zero-initialized output projection would block gradients to the blocks at step 0
        dec.pix_out.weight.normal_(std=0.02)
    loss = ifseg_loss(dec, feats, text, target)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_a_few_steps_lower_the_loss(vocab):
    dec = small_decoder()
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    batches = [artificial_batch(vocab, 4, 6, 12, GRID, (24, 24), g, noise=1.5, mix=0.3) for _ in range(4)]
    with torch.no_grad():
        before = float(np.mean([ifseg_loss(dec, *b).item() for b in batches]))
    for _ in range(20):
        for b in batches:
            opt.zero_grad()
            ifseg_loss(dec, *b).backward()
            opt.step()
    with torch.no_grad():
        after = float(np.mean([ifseg_loss(dec, *b).item() for b in batches]))
    assert after < 0.75 * before, (before, after)


def test_untrained_decoder_is_maskclip_and_equivariant_to_label_order(vocab):
    feats, text, _ = artificial_batch(vocab, 2, 5, 4, GRID, OUT, torch.Generator().manual_seed(5), noise=1.0)
    with torch.no_grad():
        for layers in (0, 2):
            logits = small_decoder(layers)(feats, text)
            assert torch.allclose(logits, torch.einsum("bdhw,cd->bchw", feats, text) / 0.07, atol=1e-4)
        dec = small_decoder(2)
        dec.pix_out.weight.normal_(std=0.1)
        perm = torch.tensor([3, 0, 4, 1, 2])
        assert torch.allclose(dec(feats, text)[:, perm], dec(feats, text[perm]), atol=1e-5)


def test_train_save_load_roundtrip(tmp_path):
    metrics = train_ifseg(tmp_path / "ck", "clip_toy", IFSegRecipe(steps=3, batch=2, warmup=1, eval_n=0))
    assert np.isfinite(metrics["final_loss"]) and np.isfinite(metrics["first_loss"])
    dec, clip, cfg = load_ifseg(tmp_path / "ck")
    assert cfg["kind"] == "ifseg" and cfg["clip"]["checkpoint"] == "clip_toy"
    assert cfg["knn"] == {"k": 3, "iterations": 25} and cfg["vocabulary"][:2] == ["circle", "square"]
    assert "no image" in cfg["recipe"]["data"]
    files = {p.name for p in (tmp_path / "ck").iterdir()}
    assert files == {"config.json", "model.safetensors"}
    assert (tmp_path / "ck" / "model.safetensors").stat().st_size < 2_000_000, "the checkpoint holds only the decoder"
    assert not any(k.startswith("visual") for k in dec.state_dict())


def test_load_refuses_other_checkpoints():
    with pytest.raises(ValueError, match="'lseg' checkpoint, not an IFSeg one"):
        load_ifseg("lseg_toy")
