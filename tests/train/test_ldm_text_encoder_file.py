"""SD 1.5 single-file checkpoints: the text encoder of the original LDM layout
(``cond_stage_model.transformer.text_model.*``, as in v1-5-pruned(-emaonly)) loads into transformers'
CLIPTextModel equal to the model it was saved from: .safetensors and .ckpt (read with weights_only), fp16 and
fp32, with and without EMA weights alongside, and with the older layout without ``text_model.``."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeseg.train.checkpoint import safe_safetensors_load, safe_torch_load  # noqa: E402
from edgeseg.train.ldm import _load_into, convert_text_encoder  # noqa: E402


def tiny_text_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77)
    return transformers.CLIPTextModel(cfg).eval()


def ldm_layout(model: torch.nn.Module, nested: bool, dtype: torch.dtype, ema: bool) -> dict[str, torch.Tensor]:
    """The original LDM key names, written here from the published layout: cond_stage_model.transformer. +
    (text_model. +) the CLIPTextModel key; UNet / VAE stand-ins and EMA copies alongside."""
    own = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in model.state_dict().items()}
    head = "cond_stage_model.transformer." + ("text_model." if nested else "")
    state = {head + k: v.to(dtype).clone() for k, v in own.items()}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 4, 3, 3, dtype=dtype)
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3, dtype=dtype)
    if ema:
        state["model_ema.diffusion_modelinput_blocks00weight"] = torch.ones(4, 4, 3, 3, dtype=dtype)
        state["model_ema.decay"] = torch.tensor(0.9999)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("nested,ema", [(True, False), (True, True), (False, False)])
def test_single_file_text_encoder_loads_equal_to_the_saved_model(tmp_path, suffix, dtype, nested, ema):
    src = tiny_text_model(0)
    state = ldm_layout(src, nested, dtype, ema)
    path = tmp_path / f"v1-5{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
        read = safe_safetensors_load(path, "Stable Diffusion")
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
        read = safe_torch_load(path, "Stable Diffusion")["state_dict"]
    dst = tiny_text_model(1)
    _load_into(dst, convert_text_encoder(read, dst.state_dict().keys()), "text_encoder")
    ids = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = src.to(dtype).float()(ids).last_hidden_state
        got = dst(ids).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_text_model_level_follows_the_target_module():
    state = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(2)}
    assert list(convert_text_encoder(state)) == ["final_layer_norm.weight"]
    assert list(convert_text_encoder(state, ["text_model.final_layer_norm.weight"])) == \
        ["text_model.final_layer_norm.weight"]
