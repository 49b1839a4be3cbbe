"""Ref-Diff SD components (tiny random LDM): ONNX vs PyTorch parity (``attn`` and ``attn_logits``), attention
capture vs diffusers' own attention, the pre-softmax logits vs a reference written from the released
``CrossAttention``, capture under SDPA processors, row sums, and the errors of a broken capture."""

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
from edgeseg.train.attn_capture import (AttentionCapture, CaptureProcessor, reference_attention,  # noqa: E402
                                         reference_logits)
from edgeseg.train.ldm import build_ldm  # noqa: E402

MODULES = {sd_text.NAME: sd_text, vae_encoder.NAME: vae_encoder, unet_attn.NAME: unet_attn}


@pytest.fixture(scope="module")
def components():
    torch.set_num_threads(1)
    comps, info = sd_components("toy-tiny")
    comps[unet_attn.NAME], info["attention"] = unet_attn.with_logits(*comps[unet_attn.NAME], info["attention"])
    return comps, info


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
        attn = wrapper(sample, t, states)[1]
    ref = reference_attention(wrapper.unet, sample, t, states, wrapper.resolutions, wrapper.grid)
    np.testing.assert_allclose(attn.numpy(), ref.numpy(), atol=1e-5, rtol=0)
    # the capture processors are back after the reference pass
    with torch.no_grad():
        again = wrapper(sample, t, states)[1]
    np.testing.assert_allclose(again.numpy(), attn.numpy(), atol=1e-6, rtol=0)


def test_attention_rows_sum_to_one_and_layers(components):
    comps, info = components
    wrapper, spec = comps[unet_attn.NAME]
    with torch.no_grad():
        attn = wrapper(*unet_attn.example_inputs(spec, batch=2))[1]
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
    assert info["latent_shape"] == [4, 24, 24]
    assert {k: info["sd_tokenizer"][k] for k in ("context_length", "pad_id")} == {"context_length": 77, "pad_id": 49407}
    spec = comps[unet_attn.NAME][1]
    assert spec.fp32_outputs == ("attn", "attn_logits")
    assert spec.inputs[1].dtype == "float32" and spec.inputs[0].max[0] == 16
    assert comps[sd_text.NAME][1].outputs[0].shape == ("batch", 77, 32)


def test_logits_output_is_declared_and_recorded(components):
    comps, info = components
    wrapper, spec = comps[unet_attn.NAME]
    logits = info["attention"]["logits"]
    # toy-tiny: latent 24, latent/4 = 6: only the mid block's cross-attention sits there
    assert logits == {"grid": [6, 6], "resolution": 6, "downscale": 4,
                      "layers": ["mid_block.attentions.0.transformer_blocks.0.attn2"]}
    assert spec.output("attn_logits").shape == ("batch", 1, 36, 77) and spec.output("attn_logits").dtype == "float32"
    assert spec.output_names == ["noise_pred", "attn", "attn_logits"]
    plain = sd_components("toy-tiny")[0][unet_attn.NAME][1]  # without with_logits: the two outputs as before
    assert plain.output_names == ["noise_pred", "attn"] and plain.fp32_outputs == ("attn",)
    json.dumps(info)


@pytest.mark.parametrize("sdpa_first", [False, True])
def test_logits_match_the_released_cross_attention(sdpa_first):
    """attn_logits = head mean of q.k * scale before the softmax (released ``CrossAttention.forward``), per layer;
    the paper's ``attn`` and the UNet's output are unchanged by capturing logits."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    _, _, unet, _ = build_ldm("toy-tiny", seed=3)
    if sdpa_first:
        unet.set_attn_processor(AttnProcessor2_0())
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 24, 24, generator=g), torch.tensor([51.0, 51.0])
    s = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        plain = unet(x, t, s).sample
    for res in (6, 12):
        cap = AttentionCapture(unet, (24, 24), [12, 24], query_downscale=2, logits_resolution=res)
        with torch.no_grad():
            noise, attn, logits = cap(x, t, s)
        ref = reference_logits(unet, x, t, s, res)
        assert logits.shape == ref.shape == (2, len(cap.logits_layer_names), res * res, 77)
        assert len(cap.logits_layer_names) == (1 if res == 6 else 3)  # mid block; down 1 + up 1 (2 layers)
        np.testing.assert_allclose(logits.numpy(), ref.numpy(), atol=1e-5, rtol=0)
        assert float(logits.std()) > 0.1 and not np.allclose(logits[0].numpy(), logits[1].numpy(), atol=1e-3)
        np.testing.assert_allclose(noise.numpy(), plain.numpy(), atol=1e-5)
        np.testing.assert_allclose(attn.numpy(), reference_attention(unet, x, t, s, [12, 24], (12, 12)).numpy(),
                                   atol=1e-5, rtol=0)
        # softmax of the logits' rows is a probability row: logits are pre-softmax, not probabilities
        assert not np.allclose(logits.sum(-1).numpy(), 1.0, atol=1e-2)


def test_logits_capture_cannot_silently_vanish():
    from diffusers.models.attention_processor import AttnProcessor2_0

    _, _, unet, _ = build_ldm("toy-tiny", seed=4)
    args = torch.randn(1, 4, 24, 24), torch.tensor([10.0]), torch.randn(1, 77, 32)
    cap = AttentionCapture(unet, (24, 24), [12], query_downscale=2, logits_resolution=6)
    mid = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2")
    # another capture rebuilt the layer's processor without logits: no silent empty output
    AttentionCapture(unet, (24, 24), [6], query_downscale=2)
    assert isinstance(mid.processor, CaptureProcessor) and not mid.processor.keep_logits
    with pytest.raises(RuntimeError, match="mid_block.attentions.0.transformer_blocks.0.attn2 captured no attention "
                                           "logits in the last forward"):
        cap(*args)
    cap = AttentionCapture(unet, (24, 24), [12], query_downscale=2, logits_resolution=6)
    mid.forward = lambda hidden_states, *a, **k: torch.zeros_like(hidden_states)  # the layer does not run
    with pytest.raises(RuntimeError, match="captured no attention logits in the last forward; it did not run"):
        cap(*args)
    del mid.forward
    with torch.no_grad():
        assert cap(*args)[2].shape == (1, 1, 36, 77)
    unet.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(RuntimeError, match="was replaced by AttnProcessor2_0"):
        cap(*args)
    with pytest.raises(ValueError, match=r"no cross-attention layer has the logits query grid 3 .* grids are "
                                         r"\[6, 12, 24\]"):
        AttentionCapture(unet, (24, 24), [12], query_downscale=2, logits_resolution=3)


def test_adding_logits_leaves_noise_and_attn_bit_identical_in_onnx(components, exported, tmp_path):
    """The paper preset reads ``attn``: the graph with ``attn_logits`` gives exactly the outputs of the graph
    without it (same seeded weights), so paper-preset results do not move."""
    wrapper, spec = sd_components("toy-tiny")[0][unet_attn.NAME]
    path = tmp_path / "plain.onnx"
    args = unet_attn.example_inputs(spec, batch=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes(), opset_version=spec.opset, dynamo=False)
    feeds = {t.name: a.numpy() for t, a in zip(spec.inputs, unet_attn.example_inputs(spec, batch=3, seed=9))}
    plain = _session(path).run(None, feeds)
    full = _session(exported[unet_attn.NAME]).run(None, feeds)
    assert len(plain) == 2 and len(full) == 3
    for a, b in zip(plain, full[:2]):
        assert np.array_equal(a, b)
