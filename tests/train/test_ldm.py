"""Tiny latent diffusion: configs, reproducible builds, loaders (checkpoint, diffusers folder, single file)
and their errors, SD tokenization, ToyWorld training smoke run, the bundled ldm_toy checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from edgeseg.train.checkpoint import CHECKPOINT_DIR, save_checkpoint  # noqa: E402
from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig  # noqa: E402
from edgeseg.train.ldm import (LDM_CONFIGS, build_ldm, ldm_state, list_models, load_ldm, sd_tokenize,  # noqa: E402
                               word_token_index)
from edgeseg.train.train_ldm import LDMRecipe, expression_targets, object_token_positions, train_ldm  # noqa: E402


def _forward(text, vae, unet):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = text(sd_tokenize(["a red circle on sand"])).last_hidden_state
        z = vae.encode(torch.rand(1, 3, 96, 96, generator=g) * 2 - 1).latent_dist.mean
        return s, z, unet(torch.randn(1, 4, 24, 24, generator=g), torch.tensor([5.0]), s).sample


def test_registry_and_cfg():
    assert list_models() == ["sd15", "toy-tiny"]
    assert LDM_CONFIGS["sd15"]["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    _, _, _, cfg = build_ldm("toy-tiny")
    assert cfg["latent_shape"] == [4, 24, 24] and cfg["scheduler"]["beta_schedule"] == "scaled_linear"
    assert cfg["tokenizer"] == {"context_length": 77, "pad_id": 49407}
    json.dumps(cfg)


def test_build_is_reproducible():
    a, b = build_ldm("toy-tiny", seed=3), build_ldm("toy-tiny", seed=3)
    for x, y in zip(_forward(*a[:3]), _forward(*b[:3])):
        assert torch.equal(x, y)
    c = build_ldm("toy-tiny", seed=4)
    assert not torch.equal(_forward(*a[:3])[2], _forward(*c[:3])[2])


def test_sd_tokenize_pads_with_eot_and_word_index():
    ids = sd_tokenize(["a red circle", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    assert ids[0, 0] == 49406 and (ids[0, 4:] == 49407).all() and (ids[1, 1:] == 49407).all()
    assert word_token_index("a red circle", "circle") == 3
    with pytest.raises(ValueError, match="word 'star' is not in"):
        word_token_index("a red circle", "star")


def test_object_token_positions_match_caption():
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer()
    world = ToyWorld("train", 0, ToyWorldConfig(size=96))
    for i in range(10):
        sc = world[i]
        ids = sd_tokenize([sc.caption])[0]
        for obj, (c, s) in zip(sc.objects, object_token_positions(sc.objects, sc.stuff)):
            assert tok.decode([int(ids[c])]).strip() == obj.colour
            assert tok.decode([int(ids[s])]).strip() == obj.shape


def test_expression_targets_point_at_the_target_words():
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer()
    world = ToyWorld("seen", 0, ToyWorldConfig(size=96))
    seen = 0
    for i in range(10):
        sc = world[i]
        for text, k, pos in expression_targets(sc):
            ids = sd_tokenize([text])[0]
            words = [tok.decode([int(ids[p])]).strip() for p in pos]
            assert words[-1] == sc.objects[k].shape and words[0] in (sc.objects[k].colour, sc.objects[k].shape)
            seen += 1
    assert seen >= 10


def test_checkpoint_roundtrip(tmp_path):
    text, vae, unet, cfg = build_ldm("toy-tiny", seed=1)
    arch = LDM_CONFIGS["toy-tiny"]
    save_checkpoint(tmp_path / "ck", ldm_state(text, vae, unet), {"kind": "ldm", "architecture": arch,
                                                                   "ldm_cfg": cfg}, dtype=torch.float32)
    t2, v2, u2, cfg2 = load_ldm(tmp_path / "ck")
    for x, y in zip(_forward(text, vae, unet), _forward(t2, v2, u2)):
        torch.testing.assert_close(x, y)
    assert cfg2["checkpoint"].endswith("ck") and cfg2["latent_shape"] == [4, 24, 24]
    assert load_ldm(tmp_path / "ck", image_size=192)[3]["attention"]["resolutions"] == [24, 48]


def test_diffusers_folder(tmp_path):
    text, vae, unet, _ = build_ldm("toy-tiny", seed=2)
    for sub, m in (("text_encoder", text), ("vae", vae), ("unet", unet)):
        m.save_pretrained(tmp_path / "sd" / sub)
    t2, v2, u2, cfg = load_ldm(f"toy-tiny:{tmp_path / 'sd'}")
    for x, y in zip(_forward(text, vae, unet), _forward(t2, v2, u2)):
        torch.testing.assert_close(x, y)
    assert cfg["checkpoint"] == str(tmp_path / "sd") and cfg["scaling_factor"] == 1.0


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found; give 'sd15:<diffusers folder>'"):
        load_ldm(f"sd15:{tmp_path / 'nowhere'}")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="has no vae/ subfolder"):
        load_ldm(f"toy-tiny:{tmp_path / 'half'}")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="neither .safetensors nor .ckpt"):
        load_ldm(f"toy-tiny:{tmp_path / 'w.txt'}")
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="has no model.diffusion_model"):
        load_ldm(f"toy-tiny:{tmp_path / 'bad.safetensors'}")
    with pytest.raises(FileNotFoundError, match="checkpoint 'no_such_ldm' not found"):
        load_ldm("no_such_ldm")
    with pytest.raises(ValueError, match="must be a multiple of 8"):
        build_ldm("toy-tiny", image_size=100)


def test_train_smoke(tmp_path):
    m = train_ldm(tmp_path / "ldm", LDMRecipe(n_scenes=12, vae_steps=2, unet_steps=2, eval_scenes=2,
                                              expression_prob=0.5), log=lambda s: None)
    assert m["unet_steps"] == 2 and 0 <= m["localization"]["pointing"] <= 1
    assert m["localization_expression"]["prompts"] == "expression"
    text, vae, unet, cfg = load_ldm(tmp_path / "ldm")
    assert cfg["scaling_factor"] > 0 and "localization" in cfg["metrics"]


@pytest.mark.skipif(not (CHECKPOINT_DIR / "ldm_toy" / "config.json").exists(), reason="ldm_toy not trained yet")
def test_bundled_ldm_toy():
    cfg = json.loads((CHECKPOINT_DIR / "ldm_toy" / "config.json").read_text())
    assert cfg["kind"] == "ldm" and (CHECKPOINT_DIR / "ldm_toy" / "model.safetensors").stat().st_size < 8_000_000
    loc = cfg["metrics"]["localization"]
    assert loc["pointing"] > 3 * loc["chance_pointing"]  # the shape word's attention finds its object
    text, vae, unet, ldm_cfg = load_ldm("ldm_toy")
    assert ldm_cfg["scaling_factor"] == cfg["ldm_cfg"]["scaling_factor"]
