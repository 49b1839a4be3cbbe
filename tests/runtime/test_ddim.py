"""numpy DDIMSchedule against diffusers' DDIMScheduler (SD v1.5 config): timesteps, add_noise, step."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.ddim import DDIMSchedule

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}


def _reference(**kw) -> "diffusers.DDIMScheduler":
    cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)
    cfg.update(kw)
    return diffusers.DDIMScheduler(**cfg)


def _img2img_timesteps(ref, steps: int, strength: float) -> np.ndarray:
    """diffusers StableDiffusionImg2ImgPipeline.get_timesteps."""
    ref.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    start = max(steps - init, 0)
    return ref.timesteps[start * ref.order:].numpy()


def test_alphas_match():
    ours, ref = DDIMSchedule(), _reference()
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)
    assert ours.alphas_cumprod.dtype == np.float32 and ours.final_alpha_cumprod == ours.alphas_cumprod[0]


@pytest.mark.parametrize("steps,strength,want", [(20, 0.1, [51, 1]), (50, 0.3, None), (20, 1.0, None),
                                                 (50, 1.0, None), (10, 0.55, None), (3, 0.0, [])])
def test_timesteps(steps, strength, want):
    got = DDIMSchedule().timesteps(steps, strength)
    ref = _img2img_timesteps(_reference(), steps, strength)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int64
    if want is not None:
        assert got.tolist() == want
    if (steps, strength) == (50, 0.3):
        assert len(got) == 15 and got[0] == 281 and got[-1] == 1


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_timestep_spacings(spacing):
    got = DDIMSchedule(timestep_spacing=spacing).timesteps(20, 0.5)
    np.testing.assert_array_equal(got, _img2img_timesteps(_reference(timestep_spacing=spacing), 20, 0.5))


def test_add_noise():
    ours, ref = DDIMSchedule(), _reference()
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for t in (1, 51, 281, 999):
        got = ours.add_noise(x0, noise, t)
        want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor([t])).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    ts = np.array([51, 901])  # one timestep per batch row
    want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(ts)).numpy()
    np.testing.assert_allclose(ours.add_noise(x0, noise, ts), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps,strength", [(20, 0.1), (50, 0.3), (20, 1.0)])
def test_step_chain(prediction_type, steps, strength):
    """A full img2img chain (noise, then DDIM steps with a fixed fake model) matches step by step."""
    ours, ref = DDIMSchedule(prediction_type=prediction_type), _reference(prediction_type=prediction_type)
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ts = ours.timesteps(steps, strength)
    _img2img_timesteps(ref, steps, strength)
    x = ours.add_noise(x0, noise, int(ts[0]))
    xr = torch.from_numpy(x.copy())
    for t in ts:
        out = (0.5 * np.tanh(x) + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)  # fake UNet
        x = ours.step(out, int(t), x)
        xr = ref.step(torch.from_numpy(out), int(t), xr, eta=0.0).prev_sample
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, xr.numpy(), rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(x).max())))
        x = xr.numpy()  # keep both chains on the same input


def test_clip_sample_and_set_alpha_to_one():
    ours = DDIMSchedule(clip_sample=True, set_alpha_to_one=True, beta_schedule="linear",
                        beta_start=0.0001, beta_end=0.02, steps_offset=0)
    ref = _reference(clip_sample=True, set_alpha_to_one=True, beta_schedule="linear", beta_start=0.0001,
                     beta_end=0.02, steps_offset=0)
    ts = ours.timesteps(10)
    ref.set_timesteps(10)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    x = np.random.default_rng(2).standard_normal((1, 4, 4, 4)).astype(np.float32) * 3
    eps = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    for t in (int(ts[0]), int(ts[-1])):  # the last step uses final_alpha_cumprod = 1
        want = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=0.0).prev_sample.numpy()
        np.testing.assert_allclose(ours.step(eps, t, x), want, rtol=1e-6, atol=1e-6)


def test_from_config_sd15_and_roundtrip():
    s = DDIMSchedule.from_config(SD15)
    assert s.to_config() == DDIMSchedule().to_config()
    assert DDIMSchedule.from_config(s.to_config()).to_config() == s.to_config()
    with pytest.raises(ValueError, match="unknown DDIM scheduler keys"):
        DDIMSchedule.from_config({"beta_startt": 0.1})
    with pytest.raises(ValueError, match="thresholding"):
        DDIMSchedule.from_config({"thresholding": True})
    with pytest.raises(ValueError, match="beta_schedule"):
        DDIMSchedule(beta_schedule="cosine")


def test_single_t_and_errors():
    s = DDIMSchedule()
    assert s.single_t(100).tolist() == [100] and s.single_t(100).dtype == np.int64
    with pytest.raises(ValueError, match="timestep must be an int in"):
        s.single_t(1000)
    with pytest.raises(ValueError, match="num_inference_steps must be"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="strength must lie"):
        s.timesteps(20, 1.5)
    with pytest.raises(ValueError, match="call timesteps"):
        DDIMSchedule().step(np.zeros(3, np.float32), 51, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="same shape"):
        s.add_noise(np.zeros(3), np.zeros(4), 5)
    x = np.ones((1, 4, 2, 2), np.float32)
    # explicit num_inference_steps works without a timesteps() call and matches the remembered one
    a = DDIMSchedule().step(x * 0.3, 51, x, num_inference_steps=20)
    s.timesteps(20, 0.1)
    np.testing.assert_array_equal(a, s.step(x * 0.3, 51, x))
    assert s.prev_timestep(1) == -49
