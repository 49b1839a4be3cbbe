"""A PyTorch reference of the Ref-Diff pipeline, for checking the numpy + ONNX Runtime predictor.

It runs the same export wrappers in PyTorch, with diffusers' own ``DDIMScheduler`` (timesteps, noising,
steps), open_clip's tokenizer (SD padding), torch interpolation and pooling. Proposals are an input (the
runtime's SAM automatic masks are checked against a torch reference in their own tests), so one call
compares everything downstream of them: the attention map ``c``, s^G, s^D, s and the chosen mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class TorchRefDiff:
    """``TorchRefDiff("toy")(image, expression, proposals)`` -> dict of numpy arrays (see :meth:`__call__`)."""

    def __init__(self, config: str | Path = "toy", **overrides):
        from edgeseg.export.refdiff_bundle import refdiff_components

        comps, info = refdiff_components(config)
        self.models = {name: wrapper.eval() for name, (wrapper, _) in comps.items()}
        self.specs = {name: spec for name, (_, spec) in comps.items()}
        self.cfg = dict(info["method_config"], **overrides)
        self.clip_prep = info["preprocessing"]
        self.ctx = info["extra_tokenizers"]["sd_tokenizer"]["context_length"]

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        """SD token ids: open_clip's tokenizer, padding after the end token replaced by the end token."""
        import open_clip

        ids = open_clip.tokenize(texts, context_length=self.ctx)
        eot = 49407
        for row in ids:
            end = int((row == eot).nonzero()[0])
            row[end + 1:] = eot
        return ids

    @staticmethod
    def _image(image: np.ndarray, prep: dict) -> torch.Tensor:
        """uint8 HxWx3 -> 1x3xHxW normalized (the image must already be at the model's size)."""
        x = torch.from_numpy(image).float().div(255).permute(2, 0, 1)[None]
        if tuple(x.shape[-2:]) != tuple(prep["image_size"]):
            x = F.interpolate(x, size=tuple(prep["image_size"]), mode="bilinear", align_corners=False,
                              antialias=True)
        mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(prep["std"]).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def attention(self, image: np.ndarray, expression: str, token: int) -> np.ndarray:
        """c: H x W float32 in [0, 1], the target token's guided-DDIM cross-attention, as the runtime computes it."""
        from diffusers import DDIMScheduler

        cfg = self.cfg
        latent = self.models["vae_encoder"](self._image(image, cfg["vae_preprocessing"]))
        states = self.models["sd_text"](self._tokens([expression]))
        empty = torch.full((1, self.ctx), 49407, dtype=torch.int64)
        empty[0, 0] = 49406
        uncond = self.models["sd_text"](empty)
        sched = DDIMScheduler(**cfg["scheduler"], clip_sample=False)
        if cfg["single_t"] is not None:
            steps = [int(cfg["single_t"])]
        else:
            sched.set_timesteps(int(cfg["steps"]))
            keep = min(int(cfg["steps"] * cfg["strength"]), int(cfg["steps"]))
            steps = [int(t) for t in sched.timesteps[len(sched.timesteps) - keep:]]
        noise = torch.from_numpy(np.random.default_rng(int(cfg["seed"])).standard_normal(latent.shape)
                                 .astype(np.float32))
        x = sched.add_noise(latent, noise, torch.tensor([steps[0]]))
        acc = 0
        for k, t in enumerate(steps):
            eps, attn = self.models["unet_attn"](torch.cat([x, x]), torch.full((2,), t, dtype=self._t_dtype()),
                                                 torch.cat([uncond, states]))
            acc = acc + attn[1, :, token]
            if k + 1 < len(steps):
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + cfg["guidance"] * (e_c - e_u), t, x).prev_sample
        a = (acc / len(steps)).reshape(1, 1, *cfg["attention"]["grid"])
        a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-8)
        c = F.interpolate(a, size=image.shape[:2], mode="bilinear", align_corners=False)
        return c[0, 0].clamp(0, 1).numpy()

    def _t_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "int64": torch.int64}[self.specs["unet_attn"].inputs[1].dtype]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, expression: str, proposals: np.ndarray, token: int, phrase: str,
                 directions: list[str]) -> dict[str, np.ndarray]:
        """Scores of ``proposals`` (N x H x W bool) for ``expression``: {"attention", "generative",
        "discriminative", "total", "best"}. ``token``, ``phrase`` and ``directions`` come from the parse."""
        from edgeseg.runtime.refer_text import position_bias

        cfg = self.cfg
        c = torch.from_numpy(self.attention(image, expression, token))
        m = torch.from_numpy(proposals).float()
        inside = m.flatten(1)
        n_in = inside.sum(1)
        mean_in = torch.where(n_in > 0, inside @ c.flatten() / n_in.clamp_min(1), torch.zeros(()))
        n_out = inside.shape[1] - n_in
        mean_out = torch.where(n_out > 0, (c.sum() - inside @ c.flatten()) / n_out.clamp_min(1), torch.zeros(()))
        s_g = mean_in - mean_out
        grid = tuple(self.specs["clip_masked"].inputs[1].shape[1:])
        frac = F.adaptive_avg_pool2d(m[:, None], grid)[:, 0]  # covered fraction of each patch
        pm = (frac >= 0.5).float()
        for i in torch.nonzero(pm.flatten(1).sum(1) == 0).flatten():
            pm[i].view(-1)[int(frac[i].flatten().argmax())] = 1.0
        bias = torch.from_numpy(position_bias(list(directions), *image.shape[:2]))
        plain = torch.from_numpy(image).float()
        biased = (plain * bias[..., None]).clamp(0, 255).to(torch.uint8).float()
        where = cfg["position_bias"]
        x_p = self._image((biased if where in ("soft", "both") else plain).to(torch.uint8).numpy(), self.clip_prep)
        src = biased if where in ("hard", "both") else plain
        crops = torch.cat([self._image((src * mk[..., None]).to(torch.uint8).numpy(), self.clip_prep) for mk in m])
        soft, hard = self.models["clip_masked"](x_p, pm, crops)
        text = F.normalize(self.models["clip_text"](self._clip_tokens([expression, phrase])), dim=-1).mean(0)
        v = F.normalize(cfg["beta"] * soft + (1 - cfg["beta"]) * hard, dim=-1)
        s_d = v @ F.normalize(text, dim=0)
        total = cfg["alpha"] * s_g + (1 - cfg["alpha"]) * s_d
        return {"attention": c.numpy(), "generative": s_g.numpy(), "discriminative": s_d.numpy(),
                "total": total.numpy(), "best": int(total.argmax())}

    def _clip_tokens(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(texts, context_length=self.specs["clip_text"].inputs[0].shape[1])
