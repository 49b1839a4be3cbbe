"""Ref-Diff SD components (tiny random LDM): ONNX vs PyTorch parity, attention capture vs diffusers' own
attention, capture under SDPA processors, row sums, and the errors of a broken capture."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from edgeseg.export import sd_text, unet_attn, vae_encoder  # noqa: E402
from edgeseg.export.refdiff_sd import sd_components  # noqa: E402
from edgeseg.train.attn_capture import AttentionCapture, reference_attention  # noqa: E402
from edgeseg.train.ldm import build_ldm  # noqa: E402

MODULES = {sd_text.NAME: sd_text, vae_encoder.NAME: vae_encoder, unet_attn.NAME: unet_attn}


@pytest.fixture(scope="module")
def components():
    torch.set_num_threads(1)
    return sd_components("toy-tiny")


@pytest.fixture(scope="module")
def exported(components, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd_onnx")
    paths = {}
    for name, (wrapper, spec) in components[0].items():
        args = MODULES[name].example_inputs(spec, batch=2)
        path = out / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(path), input_names=[t.name for t in spec.inputs],
                              output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
                              opset_version=spec.opset, dynamo=False)
        paths[name] = path
    return paths


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", [sd_text.NAME, vae_encoder.NAME, unet_attn.NAME])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(components, exported, name, batch):
    wrapper, spec = components[0][name]
    args = MODULES[name].example_inputs(spec, batch=batch, seed=batch)
    with torch.no_grad():
        ref = wrapper(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    out = _session(exported[name]).run(None, {t.name: a.numpy() for t, a in zip(spec.inputs, args)})
    assert len(out) == len(spec.outputs)
    for o, r in zip(out, ref):
        assert o.shape == tuple(r.shape) and o.shape[0] == batch
        np.testing.assert_allclose(o, r.numpy(), atol=1e-4, rtol=0)


def test_attention_matches_diffusers_reference(components):
    wrapper, spec = components[0][unet_attn.NAME]
    sample, t, states = unet_attn.example_inputs(spec, batch=2, seed=5)
    with torch.no_grad():
        _, attn = wrapper(sample, t, states)
    ref = reference_attention(wrapper.unet, sample, t, states, wrapper.resolutions, wrapper.grid)
    np.testing.assert_allclose(attn.numpy(), ref.numpy(), atol=1e-5, rtol=0)
    # the capture processors are back after the reference pass
    with torch.no_grad():
        _, again = wrapper(sample, t, states)
    np.testing.assert_allclose(again.numpy(), attn.numpy(), atol=1e-6, rtol=0)


def test_attention_rows_sum_to_one_and_layers(components):
    comps, info = components
    wrapper, spec = comps[unet_attn.NAME]
    with torch.no_grad():
        _, attn = wrapper(*unet_attn.example_inputs(spec, batch=2))
    q_h, q_w = info["attention"]["grid"]
    assert attn.shape == (2, q_h * q_w, 77)
    np.testing.assert_allclose(attn.sum(-1).numpy(), 1.0, atol=1e-5)
    assert len(info["attention"]["layers"]) >= 3  # toy: 2 layers at 24 + 2 at 12 (+ down blocks)
    assert sorted({g[0] for g in wrapper.layer_hw}) == info["attention"]["resolutions"] == [12, 24]
    json.dumps(info)  # the runtime reads it from the manifest


def test_capture_with_sdpa_processors_installed_first():
    from diffusers.models.attention_processor import AttnProcessor2_0

    _, _, unet, cfg = build_ldm("toy-tiny", seed=1)
    unet.set_attn_processor(AttnProcessor2_0())
    cap = AttentionCapture(unet, (24, 24), [12, 24], query_downscale=2)
    g = torch.Generator().manual_seed(0)
    x, t, s = torch.randn(1, 4, 24, 24, generator=g), torch.tensor([50.0]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        noise, attn = cap(x, t, s)
        plain = unet(x, t, s).sample
    np.testing.assert_allclose(noise.numpy(), plain.numpy(), atol=1e-5)  # capture does not change the output
    ref = reference_attention(unet, x, t, s, [12, 24], (12, 12))
    np.testing.assert_allclose(attn.numpy(), ref.numpy(), atol=1e-5, rtol=0)


def test_replaced_processor_raises():
    from diffusers.models.attention_processor import AttnProcessor2_0

    _, _, unet, _ = build_ldm("toy-tiny", seed=2)
    cap = AttentionCapture(unet, (24, 24), [12], query_downscale=2)
    unet.set_attn_processor(AttnProcessor2_0())  # replaces every processor, ours included
    with pytest.raises(RuntimeError, match="was replaced by AttnProcessor2_0"):
        cap(torch.randn(1, 4, 24, 24), torch.tensor([10.0]), torch.randn(1, 77, 32))


def test_unknown_resolution_raises():
    _, _, unet, _ = build_ldm("toy-tiny")
    with pytest.raises(ValueError, match=r"grids are \[6, 12, 24\]"):
        AttentionCapture(unet, (24, 24), [48], query_downscale=2)


def test_single_resolution_grid_and_specs(components):
    comps, info = components
    assert info["latent_shape"] == [4, 24, 24] and info["sd_tokenizer"] == {"context_length": 77, "pad_id": 49407}
    spec = comps[unet_attn.NAME][1]
    assert spec.fp32_outputs == ("attn",)
    assert spec.inputs[1].dtype == "float32" and spec.inputs[0].max[0] == 16
    assert comps[sd_text.NAME][1].outputs[0].shape == ("batch", 77, 32)
