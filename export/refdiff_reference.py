"""A PyTorch reference of the Ref-Diff pipeline, for checking the numpy + ONNX Runtime predictor.

It runs the same export wrappers in PyTorch, with diffusers' own ``DDIMScheduler`` (timesteps, noising,
steps), open_clip's tokenizer (SD padding), torch interpolation and pooling. Proposals are an input (the
runtime's SAM automatic masks are checked against a torch reference in their own tests), so one call
compares everything downstream of them: the attention map ``c``, s^G, s^D, s and the chosen mask.

``TorchRefDiff(config, preset="released")`` follows the released code (kodenii/Ref-Diff ``model/segmenter.py``
``get_diffattn``, ``ldm/modules/attention.py``, ``ldm/models/diffusion/ddim.py``), written from it: the image
pasted centred on a black square (PIL) and LANCZOS-resized for the VAE, the SD prompt ``expression + ", " +
positive prompt``, the latent noised at the ascending DDIM schedule's entry ``int(strength * steps)`` (timestep
101 for 20 x 0.1, ``stochastic_encode``) and denoised through the entries below it (51, 1); per UNet call and
per layer at latent/4, the head-mean pre-softmax logits (the wrapper's ``attn_logits``) combined as
``(cond - uncond) * 9 + uncond``, the token's column min-max normalized; the mean over calls as an RGB uint8
heatmap, LANCZOS to the square, cropped back, min-max + 1e-8. With ``vae_geometry="released_resize"``
(``diffusion_pad: False``, on an ``sd_dynamic`` config such as ``toy-dynamic``): no pad, BICUBIC to the
64-multiple (the config's multiple) size, the non-square map still stretched to the square and cropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class TorchRefDiff:
    """``TorchRefDiff("toy")(image, expression, proposals)`` -> dict of numpy arrays (see :meth:`__call__`)."""

    def __init__(self, config: str | Path = "toy", preset: str = "paper", **overrides):
        from edgeseg.export.refdiff_bundle import refdiff_components
        from edgeseg.runtime.refdiff_presets import resolve_options

        comps, info = refdiff_components(config)
        self.models = {name: wrapper.eval() for name, (wrapper, _) in comps.items()}
        self.specs = {name: spec for name, (_, spec) in comps.items()}
        self.preset = preset
        mc = info["method_config"]  # paper: the bundle's options as they are; released: the preset's table
        self.cfg = dict(mc, **overrides) if preset == "paper" else dict(mc, **resolve_options(preset, mc, overrides))
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
                                                 torch.cat([uncond, states]))[:2]  # (noise, attn[, attn_logits])
            acc = acc + attn[1, :, token]
            if k + 1 < len(steps):
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + cfg["guidance"] * (e_c - e_u), t, x).prev_sample
        a = (acc / len(steps)).reshape(1, 1, *cfg["attention"]["grid"])
        a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-8)
        c = F.interpolate(a, size=image.shape[:2], mode="bilinear", align_corners=False)
        return c[0, 0].clamp(0, 1).numpy()

    @torch.no_grad()
    def released_attention(self, image: np.ndarray, expression: str, token: int) -> np.ndarray:
        """c: H x W float32 in [0, 1] as the released ``get_diffattn`` computes it: ``diffusion_pad`` True (the
        default), or with ``vae_geometry="released_resize"`` (``diffusion_pad: False``, an ``sd_dynamic``
        config) the image scaled by size / max(w, h), each side ``// multiple * multiple`` (64 as released, the
        config's ``sd_dynamic.multiple``), BICUBIC, attention at ``resize // (size / logits grid)`` (``// 32``)
        and the map still LANCZOS-resized to the max(w, h) square and cropped as if padded."""
        from diffusers import DDIMScheduler
        from PIL import Image

        cfg = self.cfg
        h, w = image.shape[:2]
        side = max(h, w)
        size = int(cfg["vae_preprocessing"]["image_size"][0])
        pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        gh, gw = self.models["unet_attn"].logits_grid
        if cfg["vae_geometry"] == "released_resize":
            multiple = int(cfg["sd_dynamic"]["multiple"])
            scale_ratio = size / side
            resize_w = int(w * scale_ratio // multiple * multiple)
            resize_h = int(h * scale_ratio // multiple * multiple)
            sd = np.asarray(pil.resize((resize_w, resize_h), Image.BICUBIC)).astype(np.float32) / 255.0
            per_cell = size // gw  # 32 for SD 1.5 (attn_w = resize_w // 32), 16 for the toy
            gh, gw = resize_h // per_cell, resize_w // per_cell
        else:
            canvas = Image.new("RGB", (side, side), (0, 0, 0))
            canvas.paste(pil, ((side - w) // 2, (side - h) // 2))
            sd = np.asarray(canvas.resize((size, size), Image.LANCZOS)).astype(np.float32) / 255.0
        latent = self.models["vae_encoder"](2.0 * torch.from_numpy(sd.transpose(2, 0, 1)[None].copy()) - 1.0)
        cond = self.models["sd_text"](self._tokens([expression + ", " + cfg["positive_prompt"]]))
        uncond = self.models["sd_text"](self._tokens([""]))
        sched = DDIMScheduler(**cfg["scheduler"], clip_sample=False)
        sched.set_timesteps(int(cfg["steps"]))
        asc = sorted(int(t) for t in sched.timesteps)  # ldm's ddim_timesteps, 1, 51, 101, ...
        t_enc = int(cfg["strength"] * cfg["steps"])
        noise = torch.from_numpy(np.random.default_rng(int(cfg["seed"])).standard_normal(latent.shape)
                                 .astype(np.float32))
        x = sched.add_noise(latent, noise, torch.tensor([asc[t_enc]]))  # stochastic_encode at index t_enc
        heatmaps = []
        steps = asc[:t_enc][::-1]
        for k, t in enumerate(steps):
            eps, _, logits = self.models["unet_attn"](torch.cat([x, x]), torch.full((2,), t, dtype=self._t_dtype()),
                                                      torch.cat([uncond, cond]))
            for layer in range(logits.shape[1]):
                patch1, patch2 = logits[0, layer].double(), logits[1, layer].double()
                patch = ((patch2 - patch1) * cfg["guidance"] + patch1).reshape(gh, gw, -1)
                m = patch[:, :, token]
                heatmaps.append(((m - m.min()) / (m.max() - m.min())).numpy())
            if k + 1 < len(steps):
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + cfg["guidance"] * (e_c - e_u), t, x).prev_sample
        rgb = np.repeat(np.mean(heatmaps, axis=0)[..., None], 3, axis=-1)
        big = np.array(Image.fromarray((rgb * 255).astype(np.uint8)).resize((side, side), Image.LANCZOS)) / 255
        big = big[(w - h) // 2:(w - h) // 2 + h, :] if w > h else big[:, (h - w) // 2:(h - w) // 2 + w]
        big = big[:, :, 0]
        return ((big - big.min()) / (big.max() - big.min() + 1e-8)).astype(np.float32)

    def _t_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "int64": torch.int64}[self.specs["unet_attn"].inputs[1].dtype]

    @torch.no_grad()
    def __call__(self, image: np.ndarray, expression: str, proposals: np.ndarray, token: int, phrase: str,
                 directions: list[str]) -> dict[str, np.ndarray]:
        """Scores of ``proposals`` (N x H x W bool) for ``expression``: {"attention", "generative",
        "discriminative", "total", "best"}. ``token``, ``phrase`` and ``directions`` come from the parse.
        ``preset="released"``: :meth:`released_scores` (``directions`` unused: the released rule reads the
        expression)."""
        from edgeseg.runtime.refer_text import position_bias

        if self.preset == "released":
            return self.released_scores(image, expression, proposals, token, phrase)
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

    @torch.no_grad()
    def released_scores(self, image: np.ndarray, expression: str, proposals: np.ndarray, token: int,
                        phrase: str) -> dict[str, np.ndarray]:
        """The released ``CRIS.forward`` on given (already filtered) proposals N x H x W bool: ``apply_position``
        ("left" in the expression, else "right": a float64 ramp over 2/3 of the width), ``get_cliphard`` (the
        biased image times the mask, cut to its box, uint8; ``T.Resize`` of the shortest side to the CLIP image
        size, aspect kept, then the plain CLIP forward with interpolated position embeddings:
        :func:`edgeseg.export.released_soft_reference.released_hard_embeddings`; with ``hard_resize="clip_input"``
        the crop is squashed to the CLIP input H x W instead), the soft branch
        (:func:`edgeseg.export.released_soft_reference.released_soft_embeddings`: the unbiased image at its own
        size), ``calc_diffattn`` on :meth:`released_attention` (+ 1e-6 denominators), ``calc_hard``
        / ``calc_soft`` with t = the expression's and k = ``phrase``'s unit CLIP text embeddings, ``s = 0.7 hard +
        0.3 soft + 0.05 diff`` (the config's weights), argmax. -> {"attention", "generative", "discriminative"
        (0.7 hard + 0.3 soft), "total", "best"}."""
        from PIL import Image
        from torchvision import transforms as T

        from edgeseg.export.released_soft_reference import released_hard_embeddings, released_soft_embeddings

        cfg = self.cfg
        mean, std = self.clip_prep["mean"], self.clip_prep["std"]
        # hard_resize="clip_input": squashed to the CLIP input (H, W) instead of get_cliphard's T.Resize(224)
        squash = T.Compose([T.Resize(tuple(self.clip_prep["image_size"])), T.ToTensor(), T.Normalize(mean, std)])
        attn = torch.from_numpy(self.released_attention(image, expression, token)).double()
        masks = torch.from_numpy(np.asarray(proposals, bool))
        diff = torch.stack([(attn * m).sum() / (m.sum() + 1e-6) - (attn * ~m).sum() / ((~m).sum() + 1e-6)
                            for m in masks])
        h, w = image.shape[:2]
        w1 = w * 2 // 3
        pos = image.astype(np.float64)
        if "left" in expression:
            pos = pos * np.concatenate([np.linspace(1, 0, w1), np.zeros(w - w1)]).reshape(1, w, 1)
        elif "right" in expression:
            pos = pos * np.concatenate([np.zeros(w - w1), np.linspace(0, 1, w1)]).reshape(1, w, 1)
        crops = []
        for m in np.asarray(proposals, bool):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            crops.append((pos * m[..., None] * 1.0 + pos * 0)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
                         .astype(np.uint8))
        clip = self.models["clip_masked"]
        if cfg["hard_resize"] == "shortest_side":  # get_cliphard: T.Resize(CLIP size), aspect kept
            hard = torch.from_numpy(released_hard_embeddings(clip.visual, crops, mean, std,
                                                             size=min(self.clip_prep["image_size"]))).double()
        else:
            batch = torch.cat([squash(Image.fromarray(c))[None] for c in crops])
            hard = F.normalize(clip.plain_embeds(batch), dim=-1).double()
        soft = torch.from_numpy(released_soft_embeddings(clip.visual, image, np.asarray(proposals, bool),
                                                         mean, std)).double()
        t, k = F.normalize(self.models["clip_text"](self._clip_tokens([expression, phrase])), dim=-1).double()
        s_hard = hard @ (cfg["hard_text_weight"] * t + cfg["hard_core_weight"] * k)
        s_soft = soft @ (cfg["soft_text_weight"] * t + cfg["soft_core_weight"] * k)
        total = cfg["hard_weight"] * s_hard + cfg["soft_weight"] * s_soft + cfg["diff_weight"] * diff
        return {"attention": attn.float().numpy(), "generative": diff.float().numpy(),
                "discriminative": (cfg["hard_weight"] * s_hard + cfg["soft_weight"] * s_soft).float().numpy(),
                "total": total.float().numpy(), "best": int(total.argmax())}

    def _clip_tokens(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(texts, context_length=self.specs["clip_text"].inputs[0].shape[1])
