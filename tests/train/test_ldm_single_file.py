"""SD 1.x single-file checkpoints (the original LDM layout) load UNet, VAE and text encoder equal to the diffusers
folder they were converted from: .safetensors and .ckpt (weights_only), fp32 and fp16, without EMA, with EMA
(non-EMA by default as diffusers' from_single_file; ``+ema`` for the EMA copy) and EMA-only; offline. A file
missing a part, a corrupt or truncated one, a partial EMA copy or another architecture gives one line naming the
file and the fix. The converter writing the files is the tests' own (sd_ldm_layout.py)."""

from __future__ import annotations

import copy
import json
import socket
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sd_ldm_layout import to_ldm_file  # noqa: E402

from edgeseg.train.ldm import _load_diffusers_folder, build_modules, load_ldm, parse_spec  # noqa: E402
from edgeseg.train.ldm_single_file import load_single_file_into  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def tiny_sd15() -> dict[str, dict]:
    """SD 1.5's configs (4 levels, 2 resnets per level, cross-attention in the first 3) with small channels."""
    arch = {k: json.loads((CONFIGS / f"sd15-{k}.json").read_text()) for k in ("unet", "vae", "text")}
    arch["unet"].update(block_out_channels=[32, 32, 64, 64], norm_num_groups=8, cross_attention_dim=32,
                        attention_head_dim=4, sample_size=16)
    arch["vae"].update(block_out_channels=[16, 16, 32, 32], norm_num_groups=8, sample_size=32)
    arch["text"].update(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                        num_attention_heads=2)
    return arch


def outputs(text, vae, unet) -> list[torch.Tensor]:
    """UNet noise prediction, VAE latent mean and text hidden states on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        states = text(ids).last_hidden_state
        return [unet(z, torch.tensor([51, 1]), states).sample, vae.encode(x).latent_dist.mean, states]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (on a busy 2-core machine, more make a 0.3 s forward take 20 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict, torch.nn.Module, tuple, dict]:
    """A random-weight SD-1.5-shaped diffusers folder, the architecture, a second UNet (the EMA copy), the folder
    loaded back (the reference modules) and a cache of reference outputs."""
    arch = tiny_sd15()
    root = tmp_path_factory.mktemp("sd") / "pipeline"
    for sub, m in zip(("text_encoder", "vae", "unet"), build_modules(arch, seed=0)):
        m.save_pretrained(root / sub)
    ema_unet = build_modules(arch, seed=1)[2]
    return root, arch, ema_unet, _load_diffusers_folder("sd15", root), {}


def reference(folder, dtype: torch.dtype, ema: bool) -> list[torch.Tensor]:
    """Outputs of the folder's modules with weights rounded to ``dtype`` (fp16 files hold rounded weights),
    the UNet replaced by the EMA copy if ``ema``."""
    _, _, ema_unet, (text, vae, unet), cache = folder
    if (dtype, ema) not in cache:
        mods = [copy.deepcopy(m).to(dtype).float() for m in (text, vae, ema_unet if ema else unet)]
        cache[dtype, ema] = outputs(*mods)
    return cache[dtype, ema]


@pytest.fixture()
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access during a single-file load")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 840000}, path)
    return path


def load(path: Path, arch: dict, ema: bool = False) -> tuple:
    text, vae, unet = build_modules(arch, seed=7)  # other random weights: everything must be overwritten
    load_single_file_into(path, text, vae, unet, ema=ema)
    return text, vae, unet


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", ["plain", "with-ema", "with-ema+ema", "emaonly"])
def test_single_file_equals_the_folder(folder, tmp_path, offline, suffix, dtype, variant):
    _, arch, ema_unet, (text, vae, unet), _ = folder
    stored_unet = ema_unet if variant == "emaonly" else unet
    state = to_ldm_file(text, vae, stored_unet, dtype, ema_unet if variant.startswith("with-ema") else None)
    path = save(state, tmp_path / f"v1-5-{variant}{suffix}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = outputs(*load(path, arch, ema=variant.endswith("+ema")))
    said = [str(w.message) for w in caught if "EMA" in str(w.message)]
    assert said == ([f"{path} holds EMA and non-EMA UNet weights; loading the non-EMA ones (model.diffusion_model.*) "
                     f"as diffusers' from_single_file does; use 'sd15+ema:{path}' for the EMA weights"]
                    if variant == "with-ema" else [])
    want = reference(folder, dtype, ema=variant in ("with-ema+ema", "emaonly"))
    for name, a, b in zip(("unet noise", "vae latent", "text states"), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    # the two UNets differ: loading the wrong one would fail
    assert not torch.allclose(reference(folder, dtype, True)[0], reference(folder, dtype, False)[0], atol=1e-3)


def test_the_older_text_layout_and_load_ldm_specs(tmp_path, offline):
    """``toy-tiny`` (3 levels, 1 resnet per level) through load_ldm's spec strings, with the text encoder in the
    older layout (no ``text_model.``)."""
    from sd_ldm_layout import ema_of, text_to_ldm, unet_to_ldm

    text, vae, unet, _ = load_ldm("toy-tiny")
    other = build_modules(json.loads((CONFIGS / "ldm-toy-tiny.json").read_text()), seed=3)[2]
    state = to_ldm_file(text, vae, unet, torch.float32)
    state = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
    state.update(text_to_ldm(text.state_dict(), nested=False))
    state.update(ema_of(unet_to_ldm(other.state_dict(), dict(other.config))))
    path = save(state, tmp_path / "toy.safetensors")
    with pytest.warns(UserWarning, match="holds EMA and non-EMA UNet weights"):
        t2, v2, u2, cfg = load_ldm(f"toy-tiny:{path}")
    for a, b in zip(outputs(t2, v2, u2)[1:], outputs(text, vae, unet)[1:]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _, _, u3, _ = load_ldm(f"toy-tiny+ema:{path}")
    assert all(torch.equal(p, q) for p, q in zip(u3.state_dict().values(), other.state_dict().values()))
    assert cfg["checkpoint"] == str(path) and cfg["scaling_factor"] == 1.0
    assert parse_spec(f"sd15+ema:{path}") == ("sd15", str(path), True)
    assert parse_spec("ldm_toy") == ("ldm_toy", "", False)
    with pytest.raises(ValueError, match=r"unknown option '\+fp8' in 'sd15\+fp8:/x'; the only one is '\+ema'"):
        parse_spec("sd15+fp8:/x")
    with pytest.raises(ValueError, match="selects the EMA weights of a single-file checkpoint; .* is a folder"):
        load_ldm(f"toy-tiny+ema:{tmp_path}")


def one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("drop, part", [("model.diffusion_model.", "the UNet"), ("first_stage_model.", "the VAE"),
                                        ("cond_stage_model.", "the text encoder")])
def test_a_missing_part_is_named(folder, tmp_path, drop, part):
    _, arch, _, modules, _ = folder
    state = to_ldm_file(*modules, torch.float16)
    path = save({k: v for k, v in state.items() if not k.startswith(drop)}, tmp_path / "part.safetensors")
    with pytest.raises(ValueError) as info:
        load(path, arch)
    prefix = "cond_stage_model.transformer." if drop.startswith("cond") else drop
    assert one_line(info) == (f"{path} has no {prefix}* weights ({part}); give an original SD 1.x checkpoint (UNet, "
                              f"VAE and text encoder in one file) or a diffusers folder")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("damage", ["truncated", "garbled-header"])
def test_a_corrupt_or_truncated_file_is_named(folder, tmp_path, suffix, damage):
    _, arch, _, modules, _ = folder
    path = save(to_ldm_file(*modules, torch.float16), tmp_path / f"bad{suffix}")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else blob[:8] + b"\x00garbage" * 8 + blob[72:])
    with pytest.raises(ValueError) as info:
        load(path, arch)
    msg = one_line(info)
    assert msg.startswith(f"{path} is not a ")
    assert ("valid .safetensors Stable Diffusion file" if suffix == ".safetensors" else
            "safe Stable Diffusion checkpoint: it cannot be read as tensors only") in msg
    assert msg.endswith("holding only tensors (a state dict as torch.save writes it)")


def test_ema_refusals_and_another_architecture(folder, tmp_path):
    _, arch, ema_unet, (text, vae, unet), _ = folder
    plain = save(to_ldm_file(text, vae, unet, torch.float32), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError) as info:
        load(plain, arch, ema=True)
    assert one_line(info) == (f"{plain} has no EMA weights (model_ema.*): its model.diffusion_model.* are the only "
                              "UNet weights (-emaonly files store the EMA weights there); load it without +ema")
    state = to_ldm_file(text, vae, unet, torch.float32, ema_unet)
    gone = "model_ema.diffusion_modelinput_blocks00weight"
    partial = save({k: v for k, v in state.items() if k != gone}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError) as info:
        load(partial, arch, ema=True)
    n = sum(k.startswith("model.diffusion_model.") for k in state)
    assert one_line(info) == (f"{partial}: 1 of {n} UNet weights have no EMA copy (e.g. {gone}); load it without "
                              "+ema for the non-EMA weights")
    toy = [m for m in load_ldm("toy-tiny")[:3]]
    other = save(to_ldm_file(*toy, torch.float32), tmp_path / "toy.safetensors")
    with pytest.raises(ValueError) as info:
        load(other, arch)
    assert one_line(info).startswith(f"{other}: the UNet weights do not fit the architecture (")
    assert one_line(info).endswith("is it an SD 1.x checkpoint of the architecture given (e.g. sd15)?")
