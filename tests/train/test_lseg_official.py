"""lang-seg's LSeg (edgeseg.train.lseg_official): the official key layout (730 keys for clip_vitl16_384), the
forward as lang-seg's forward_flex / forward_vit compute it, and the importer of lang-seg checkpoints (Lightning
or plain, weights_only, refusals naming the keys)."""

import os
import sys
import types

import pytest
import torch

from edgeseg.train.lseg_official import LSegOfficial, load_official_lseg, official_config, official_lseg_spec
from edgeseg.train.official_weights import randomize, save_official_layout

TINY = "lseg_tiny_official"


@pytest.mark.parametrize("name, keys, pos", [("lseg_vitl16_384", 730, (1, 577, 1024)),
                                             ("lseg_vitb32_384", 586, (1, 145, 768))])
def test_the_full_size_layouts_have_lang_segs_keys(name, keys, pos):
    with torch.device("meta"):
        sd = LSegOfficial(official_config(name)).state_dict()
    assert len(sd) == keys and tuple(sd["pretrained.model.pos_embed"].shape) == pos
    post = sorted(k for k in sd if k.startswith("pretrained.act_postprocess"))
    assert "pretrained.act_postprocess1.0.project.0.weight" in post and "pretrained.act_postprocess1.3.weight" in post
    assert ("pretrained.act_postprocess4.4.weight" in post) == (name == "lseg_vitl16_384")  # 3x3 stride-2 conv
    for k in ("scratch.refinenet1.resConfUnit1.bn1.running_var", "scratch.refinenet4.out_conv.bias",
              "scratch.layer4_rn.weight", "scratch.head1.weight", "clip_pretrained.text_projection",
              "clip_pretrained.visual.conv1.weight", "pretrained.model.head.weight"):
        assert k in sd, k
    assert tuple(sd["scratch.head1.weight"].shape) == (512, 256, 1, 1)
    assert not any("conv1.bias" in k for k in sd if k.startswith("scratch.refinenet"))  # BatchNorm convs: no bias


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny lang-seg LSeg saved as a Lightning checkpoint, and the model it holds."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = LSegOfficial(official_config(TINY))
    state = randomize(model, seed=3)
    path = save_official_layout(state, tmp_path_factory.mktemp("lseg") / "demo_e200.ckpt", "lightning")
    model.load_state_dict(state)
    return model.eval(), state, path


def test_the_taps_are_timms_own_block_outputs(tiny):
    """At the ViT's pretraining size the resized position embedding is the stored one: forward_flex's tokens
    equal timm's forward_features up to the hooked blocks."""
    model, _, _ = tiny
    vit, out = model.pretrained.model, {}
    hooks = [vit.blocks[i].register_forward_hook(lambda m, i_, o, i=i: out.__setitem__(i, o))
             for i in model.config.hooks]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vit.forward_features(x)
        taps = model._taps(x)
    for h in hooks:
        h.remove()
    for t, i in zip(taps, model.config.hooks):
        assert torch.allclose(t, out[i], atol=1e-6)


def test_a_lightning_checkpoint_imports_with_every_weight(tiny):
    model, state, path = tiny
    loaded = load_official_lseg(TINY, path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    x, text = torch.randn(1, 3, 96, 96), torch.nn.functional.normalize(torch.randn(3, model.embed_dim), dim=-1)
    with torch.no_grad():
        assert torch.equal(loaded(x, text), model(x, text))
        assert loaded(x, text).shape == (1, 3, 96, 96)


def test_a_plain_state_dict_imports_too(tiny, tmp_path):
    _, state, _ = tiny
    path = save_official_layout(state, tmp_path / "lseg.pth", "plain")
    assert official_lseg_spec(f"{TINY}:{path}") == (TINY, str(path))
    assert torch.equal(load_official_lseg(TINY, path).scratch.head1.weight, state["scratch.head1.weight"])


def test_lightning_objects_pickled_next_to_the_weights_are_not_run(tiny, tmp_path):
    """Lightning pickles its own classes (hyper-parameter dicts, callback states) into .ckpt files; they load as
    inert stand-ins without Lightning installed; anything else pickled is refused, named."""
    _, state, _ = tiny
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    fake = {n: types.ModuleType(n) for n in names}
    AttributeDict = type("AttributeDict", (dict,), {"__module__": names[-1], "__qualname__": "AttributeDict"})
    fake[names[-1]].AttributeDict = AttributeDict
    sys.modules.update(fake)
    try:
        torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()},
                    "hyper_parameters": AttributeDict(backbone="clip_vitl16_384")}, tmp_path / "pl.ckpt")
    finally:
        for n in names:
            del sys.modules[n]
    assert torch.equal(load_official_lseg(TINY, tmp_path / "pl.ckpt").scratch.head1.bias, state["scratch.head1.bias"])
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "hook": os.getcwd}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"is not a safe lang-seg LSeg checkpoint: it pickles 'posix.getcwd'"):
        load_official_lseg(TINY, tmp_path / "bad.ckpt")


def test_a_mismatching_checkpoint_is_refused_naming_the_keys(tiny, tmp_path):
    _, state, _ = tiny
    broken = {k: v for k, v in state.items() if k != "scratch.head1.bias"}
    broken["scratch.extra.weight"] = torch.zeros(1)
    path = save_official_layout(broken, tmp_path / "broken.ckpt", "lightning")
    with pytest.raises(ValueError, match=r"does not fit the lang-seg LSeg 'lseg_tiny_official' architecture: keys "
                                         r"1 missing \(first: scratch.head1.bias\); 1 unexpected \(first: "
                                         r"scratch.extra.weight\); pick the matching config"):
        load_official_lseg(TINY, path)
    shaped = dict(state, **{"scratch.head1.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"scratch.head1.bias has shape \[7\], the architecture \[32\]"):
        load_official_lseg(TINY, save_official_layout(shaped, tmp_path / "shaped.ckpt", "lightning"))
    with pytest.raises(FileNotFoundError, match="lang-seg LSeg checkpoint '/nowhere.ckpt' not found"):
        load_official_lseg(TINY, "/nowhere.ckpt")


def test_the_head_block_is_one_shared_block_applied_block_depth_times(tiny):
    model, _, _ = tiny
    assert model.config.arch_option == 1 and model.config.block_depth == 2
    assert isinstance(model.scratch.head_block.activation, torch.nn.LeakyReLU)
    assert model.scratch.head_block.activation.negative_slope == 0.01
    pixel = torch.nn.functional.normalize(torch.randn(1, model.embed_dim, 8, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, model.embed_dim), dim=-1)
    blk = model.scratch.head_block
    with torch.no_grad():
        raw = model.logit_scale * torch.einsum("bdhw,cd->bchw", pixel, text)
        conv = blk.depthwise.depthwise
        step = lambda x: conv(x.reshape(-1, 1, 8, 8)).view(1, 4, 8, 8) + x.max(1, keepdim=True)[0]  # noqa: E731
        want = torch.nn.functional.interpolate(step(torch.nn.functional.leaky_relu(step(raw))), scale_factor=2,
                                               mode="bilinear", align_corners=True)
        assert torch.allclose(model.head_logits(pixel, text), want, atol=1e-5)
    assert abs(float(model.logit_scale) - 1 / 0.07) < 1e-5
