"""DDIM noise schedule for the slim runtime (numpy only): what Ref-Diff needs of diffusers' ``DDIMScheduler``.

Defaults are Stable Diffusion v1.5's scheduler config (scaled-linear betas 0.00085..0.012 over 1000 steps,
``steps_offset=1``, ``set_alpha_to_one=False``, epsilon prediction, no sample clipping, "leading" spacing).

- :meth:`DDIMSchedule.timesteps` = diffusers ``set_timesteps`` + the img2img pipelines' ``get_timesteps``:
  20 steps x strength 0.1 -> the last 2 of the 20 timesteps (``[51, 1]``), as in the released Ref-Diff code.
- :meth:`DDIMSchedule.add_noise` = ``DDIMScheduler.add_noise``; :meth:`DDIMSchedule.step` = ``step`` with eta 0
  (deterministic). :meth:`DDIMSchedule.single_t` is the paper's single-timestep mode (noise to t, one UNet call).

Betas and cumulative alphas follow diffusers' order (``linspace`` rounded to float32, then squared in float32;
cumulative product accumulated in float64 like torch's CPU ``cumprod``): ``alphas_cumprod`` matches diffusers to
~4e-7 relative (torch's float32 ``linspace`` rounds a few values differently). All outputs are float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers config keys that do not change deterministic DDIM sampling (accepted and ignored by from_config)
_IGNORED_KEYS = {"skip_prk_steps", "dynamic_thresholding_ratio", "sample_max_value", "trained_betas"}


def _betas(schedule: str, n: int, beta_start: float, beta_end: float) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64).astype(np.float32)
    if schedule == "scaled_linear":
        root = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64).astype(np.float32)
        return root * root
    # squaredcos_cap_v2 (Nichol & Dhariwal cosine schedule, max beta 0.999), as diffusers' betas_for_alpha_bar
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=np.float32)


@dataclass
class DDIMSchedule:
    """Deterministic DDIM (eta = 0). Arrays: ``betas``, ``alphas_cumprod`` (float32, length
    ``num_train_timesteps``) and ``final_alpha_cumprod`` (used when the previous timestep is < 0)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    betas: np.ndarray = field(init=False, repr=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False)
    final_alpha_cumprod: np.float32 = field(init=False, repr=False)
    num_inference_steps: int | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.num_train_timesteps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_train_timesteps must be an int >= 1, got {n!r}")
        for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                              ("timestep_spacing", TIMESTEP_SPACINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; use one of {list(allowed)}")
        if not 0 < self.beta_start < 1 or not 0 < self.beta_end < 1:
            raise ValueError(f"beta_start/beta_end must lie in (0, 1), got {self.beta_start}, {self.beta_end}")
        self.betas = _betas(self.beta_schedule, n, self.beta_start, self.beta_end)
        # float32 alphas, product accumulated in float64 (as torch's CPU cumprod does), stored as float32
        self.alphas_cumprod = np.cumprod((np.float32(1.0) - self.betas).astype(np.float64)).astype(np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DDIMSchedule":
        """From a dict: :meth:`to_config`'s output or a diffusers ``scheduler_config.json`` (``_class_name``,
        ``_diffusers_version`` and keys irrelevant to eta-0 DDIM are ignored; ``thresholding`` /
        ``rescale_betas_zero_snr`` / ``trained_betas`` set to a true value are refused)."""
        names = {f.name for f in fields(cls) if f.init}
        for key in ("thresholding", "rescale_betas_zero_snr", "trained_betas"):
            if config.get(key):
                raise ValueError(f"scheduler option {key}={config[key]!r} is not supported by the numpy DDIM; "
                                 f"export with {key} off (SD v1.5 has it off)")
        unknown = sorted(k for k in config if k not in names and k not in _IGNORED_KEYS and not k.startswith("_")
                         and k not in ("thresholding", "rescale_betas_zero_snr"))
        if unknown:
            raise ValueError(f"unknown DDIM scheduler keys {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_config(self) -> dict[str, Any]:
        """JSON-serializable constructor arguments (round-trips through :meth:`from_config`)."""
        return {k: v for k, v in asdict(self).items() if k in {f.name for f in fields(self) if f.init}}

    # -- timesteps -------------------------------------------------------------------------------------
    def _check_t(self, t: int) -> int:
        if isinstance(t, (bool, float)) or not isinstance(t, (int, np.integer)) \
                or not 0 <= int(t) < self.num_train_timesteps:
            raise ValueError(f"timestep must be an int in [0, {self.num_train_timesteps}), got {t!r}")
        return int(t)

    def timesteps(self, num_inference_steps: int, strength: float = 1.0) -> np.ndarray:
        """Descending int64 timesteps: diffusers ``set_timesteps(num_inference_steps)`` followed by the img2img
        ``get_timesteps(num_inference_steps, strength)`` cut (keep the last ``int(steps * strength)``).
        Also remembers ``num_inference_steps`` for :meth:`step`."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be an int in [1, {self.num_train_timesteps}], "
                             f"got {num_inference_steps!r}")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength!r}")
        n, steps = self.num_train_timesteps, int(num_inference_steps)
        if self.timestep_spacing == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        else:
            ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
        self.num_inference_steps = steps
        init = min(int(steps * strength), steps)
        return ts[max(steps - init, 0):].copy()

    def single_t(self, t: int) -> np.ndarray:
        """The paper's single-timestep mode: ``[t]`` (int64); noise the latent to t with :meth:`add_noise` and
        read the UNet once, no :meth:`step`."""
        return np.array([self._check_t(t)], dtype=np.int64)

    def prev_timestep(self, t: int, num_inference_steps: int | None = None) -> int:
        """The timestep :meth:`step` moves to (may be negative at the last step)."""
        steps = num_inference_steps or self.num_inference_steps
        if steps is None:
            raise ValueError("num_inference_steps unknown: call timesteps(...) first or pass num_inference_steps")
        return self._check_t(t) - self.num_train_timesteps // int(steps)

    # -- noise / step ----------------------------------------------------------------------------------
    def add_noise(self, x0: np.ndarray, noise: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        """q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) noise; ``t`` an int or one int per batch row (B,)."""
        x0, noise = np.asarray(x0, np.float32), np.asarray(noise, np.float32)
        if x0.shape != noise.shape:
            raise ValueError(f"x0 {x0.shape} and noise {noise.shape} must have the same shape")
        t_arr = np.atleast_1d(np.asarray(t))
        for v in t_arr.tolist():
            self._check_t(v)
        ac = self.alphas_cumprod[t_arr.astype(np.int64)]
        shape = (-1,) + (1,) * (x0.ndim - 1) if t_arr.size > 1 else ()
        a = (ac ** np.float32(0.5)).reshape(shape) if shape else ac[0] ** np.float32(0.5)
        b = ((np.float32(1.0) - ac) ** np.float32(0.5)).reshape(shape) if shape \
            else (np.float32(1.0) - ac[0]) ** np.float32(0.5)
        return (a * x0 + b * noise).astype(np.float32)

    def step(self, model_output: np.ndarray, t: int, x: np.ndarray,
             num_inference_steps: int | None = None) -> np.ndarray:
        """One deterministic DDIM step (eta 0): x_t -> x_{t_prev}. ``model_output`` is the UNet's prediction
        (epsilon / v / x0 per ``prediction_type``); ``num_inference_steps`` defaults to the last
        :meth:`timesteps` call."""
        eps_in, x = np.asarray(model_output, np.float32), np.asarray(x, np.float32)
        if eps_in.shape != x.shape:
            raise ValueError(f"model_output {eps_in.shape} and x {x.shape} must have the same shape")
        prev = self.prev_timestep(t, num_inference_steps)
        a_t = self.alphas_cumprod[int(t)]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = np.float32(1.0) - a_t
        half = np.float32(0.5)
        if self.prediction_type == "epsilon":
            x0 = (x - b_t ** half * eps_in) / a_t ** half
            eps = eps_in
        elif self.prediction_type == "sample":
            x0 = eps_in
            eps = (x - a_t ** half * x0) / b_t ** half
        else:  # v_prediction
            x0 = a_t ** half * x - b_t ** half * eps_in
            eps = a_t ** half * eps_in + b_t ** half * x
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        return (a_prev ** half * x0 + (np.float32(1.0) - a_prev) ** half * eps).astype(np.float32)

    def predict_x0(self, model_output: np.ndarray, t: int, x: np.ndarray) -> np.ndarray:
        """The predicted clean latent at t (epsilon prediction: (x - sqrt(1 - a_t) eps) / sqrt(a_t))."""
        a_t = self.alphas_cumprod[self._check_t(t)]
        x, out = np.asarray(x, np.float32), np.asarray(model_output, np.float32)
        b_t = np.float32(1.0) - a_t
        if self.prediction_type == "epsilon":
            return ((x - b_t ** 0.5 * out) / a_t ** 0.5).astype(np.float32)
        if self.prediction_type == "sample":
            return out
        return (a_t ** 0.5 * x - b_t ** 0.5 * out).astype(np.float32)
