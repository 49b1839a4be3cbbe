"""``edgeseg train ldm``: a tiny latent diffusion model (VAE + UNet + CLIP text encoder) on ToyWorld, from scratch.

Stage 1 trains the VAE (L1 + MSE reconstruction, small KL); the latent scaling factor is then set to 1 / std of
the latent means (as SD's 0.18215 was chosen). Stage 2 trains UNet and text encoder jointly on ToyWorld captions
with the epsilon loss under SD 1.5's scaled-linear DDPM schedule, 10% captions dropped to "" (for CFG),
timesteps drawn half uniform on [0, 1000) and half on [0, ``low_t_max``) (Ref-Diff reads the maps at low noise).

Optional attention supervision (``attn_weight`` > 0, reported in the checkpoint's recipe): a cross-entropy
between each object's colour/shape token attention (the exported head- and layer-averaged map, normalized over
pixels) and that object's mask. A UNet trained from scratch for minutes on one CPU thread does not learn
word-to-region attention by itself; this term stands in for what a web-scale SD learned from its data.

:func:`attention_localization` measures the pointing accuracy and IoU of the shape-word maps on held-out
``seen`` scenes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attn_capture import AttentionCapture
from .checkpoint import save_checkpoint
from .data.toyworld import ToyObject, ToyWorld, ToyWorldConfig
from .ldm import _arch, build_modules, ldm_state, make_cfg, sd_tokenize


@dataclass
class LDMRecipe:
    arch: str = "toy-tiny"
    image_size: int = 96
    n_scenes: int = 2000  # ToyWorld "train" scenes, pre-rendered
    seed: int = 0
    vae_minutes: float = 6.0
    vae_steps: int = 3000  # cap; training stops at whichever comes first
    vae_batch: int = 8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-5
    unet_minutes: float = 22.0
    unet_steps: int = 20000
    unet_batch: int = 8
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    caption_dropout: float = 0.1
    low_t_fraction: float = 0.5
    low_t_max: int = 300
    attn_weight: float = 0.5  # attention supervision weight (0 = plain LDM training)
    expression_prob: float = 0.0  # fraction of prompts that are a referring expression ("the red circle")
    eval_t: int = 100
    eval_scenes: int = 50
    init: str | None = None  # continue from this ldm checkpoint (its VAE kept frozen, no VAE stage)


def betas_alphas(sched: dict[str, Any]) -> torch.Tensor:
    """alphas_cumprod (num_train_timesteps,) of the scaled-linear schedule."""
    n = sched["num_train_timesteps"]
    betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def object_token_positions(objects: list[ToyObject], stuff: str) -> list[tuple[int, int]]:
    """(colour token, shape token) positions of each object in the SD tokens of ToyWorld's caption."""
    from .ldm import simple_tokenizer

    tok = simple_tokenizer()
    parts = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.name}" for o in objects]
    out = []
    for i in range(len(parts)):
        prefix = parts[0] if i == 0 else (", ".join(parts[:i + 1]) if i < len(parts) - 1
                                          else ", ".join(parts[:-1]) + " and " + parts[-1])
        n = len(tok.encode(prefix))  # shape word is the last token (single-token words), +1 for sot below
        out.append((n - 1, n))
    return out


def expression_targets(scene) -> list[tuple[str, int, tuple[int, ...]]]:
    """(text, target object, token positions to supervise: colour if present, then the target's shape word) of
    each expression that names its target's shape ("the red circle", "the ring above the blue square")."""
    from .ldm import word_token_index

    out = []
    for e in scene.expressions:
        obj = scene.objects[e.target]
        words = e.text.split()
        if obj.shape not in words:
            continue
        pos = [word_token_index(e.text, obj.shape)]
        k = words.index(obj.shape)
        if k > 0 and words[k - 1] == obj.colour:
            pos.insert(0, pos[0] - 1)
        out.append((e.text, e.target, tuple(pos)))
    return out


def images_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 list -> B x 3 x H x W float32 in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _masks(scene, grid: int) -> np.ndarray:
    """K x grid*grid float32: fraction of each cell covered by each object."""
    n = scene.instances.shape[0]
    f = n // grid
    out = []
    for k in range(len(scene.objects)):
        m = (scene.instances == k + 1).astype(np.float32).reshape(grid, f, grid, f).mean((1, 3))
        out.append(m.reshape(-1))
    return np.stack(out) if out else np.zeros((0, grid * grid), np.float32)


def attention_localization(text: nn.Module, vae: nn.Module, unet: nn.Module, cfg: dict[str, Any],
                           n_scenes: int = 50, t: int = 100, split: str = "seen", seed: int = 0,
                           prompts: str = "caption") -> dict[str, float]:
    """Shape-word cross-attention vs object masks on ``n_scenes`` held-out ToyWorld scenes at noise level ``t``.

    ``prompts="caption"``: the scene caption, every object's shape token; ``"expression"``: each referring
    expression naming its target's shape, that shape token. ``pointing`` = argmax of the token's map (upsampled
    to the image) lies in the object; ``iou`` = IoU of the map min-max normalized and thresholded at 0.5;
    ``chance_pointing`` = mean object area fraction (what a random point scores)."""
    if prompts not in ("caption", "expression"):
        raise ValueError(f"prompts {prompts!r} must be 'caption' or 'expression'")
    size = cfg["preprocessing"]["image_size"][0]
    world = ToyWorld(split, seed, ToyWorldConfig(size=size))
    cap = AttentionCapture(unet, tuple(cfg["latent_shape"][1:]), cfg["attention"]["resolutions"],
                           query_downscale=cfg["attention"]["query_downscale"])
    ac = betas_alphas(cfg["scheduler"])[t]
    gen = torch.Generator().manual_seed(seed)
    point, ious, chance = [], [], []
    with torch.no_grad():
        for i in range(n_scenes):
            sc = world[i]
            if not sc.objects:
                continue
            z = vae.encode(images_tensor([sc.image])).latent_dist.mean * cfg["scaling_factor"]
            noisy = ac.sqrt() * z + (1 - ac).sqrt() * torch.randn(z.shape, generator=gen)
            if prompts == "caption":
                items = [(sc.caption, k, p[1]) for k, p in enumerate(object_token_positions(sc.objects, sc.stuff))]
            else:
                items = [(txt, k, pos[-1]) for txt, k, pos in expression_targets(sc)]
            if not items:
                continue
            texts = sorted({it[0] for it in items})
            states = text(sd_tokenize(texts)).last_hidden_state
            n = len(texts)
            _, attn = cap(noisy.expand(n, -1, -1, -1), torch.full((n,), float(t)), states)
            gh, gw = cap.grid
            for txt, k, shape_pos in items:
                m = attn[texts.index(txt), :, shape_pos].reshape(1, 1, gh, gw)
                m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
                mask = sc.instances == k + 1
                point.append(float(mask.flat[int(m.argmax())]))
                mn = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
                pred = mn > 0.5
                ious.append(float((pred & mask).sum() / max((pred | mask).sum(), 1)))
                chance.append(float(mask.mean()))
    return {"pointing": float(np.mean(point)), "iou": float(np.mean(ious)), "chance_pointing": float(np.mean(chance)),
            "objects": len(point), "scenes": n_scenes, "t": t, "split": split, "prompts": prompts}


def _log(log: Callable[[str], None] | None, msg: str) -> None:
    (log or (lambda s: print(s, flush=True)))(msg)


def train_vae(vae: nn.Module, images: torch.Tensor, r: LDMRecipe, log: Callable[[str], None] | None = None) -> int:
    opt = torch.optim.AdamW(vae.parameters(), lr=r.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(r.seed)
    vae.train()
    t0, step = time.time(), 0
    while step < r.vae_steps and time.time() - t0 < r.vae_minutes * 60:
        x = images[torch.randint(len(images), (r.vae_batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + r.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            _log(log, f"vae step {step} loss {loss.item():.4f} kl {kl.item():.3f} {time.time() - t0:.0f}s")
    vae.eval()
    return step


def train_ldm(out: str | Path, recipe: LDMRecipe | None = None, log: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """Train the tiny LDM on ToyWorld and save an ``ldm`` checkpoint in ``out``; returns the metrics."""
    r = recipe or LDMRecipe()
    torch.manual_seed(r.seed)
    arch = _arch(r.arch)
    if r.init:
        from .ldm import load_ldm

        text, vae, unet, cfg = load_ldm(r.init)
        cfg = {k: v for k, v in cfg.items() if k not in ("checkpoint", "metrics", "weights_sha256")}
    else:
        text, vae, unet = build_modules(arch, r.seed)
        cfg = make_cfg(r.arch, arch, r.image_size)
    world = ToyWorld("train", r.seed, ToyWorldConfig(size=r.image_size))
    scenes = [world[i] for i in range(r.n_scenes)]
    images = images_tensor([s.image for s in scenes])
    _log(log, f"{len(scenes)} scenes rendered")

    vae_steps = 0 if r.init else train_vae(vae, images, r, log)
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
        rec = vae.decode(lat[:64]).sample
        vae_mse = float(F.mse_loss(rec, images[:64]))
    if not r.init:
        cfg["scaling_factor"] = float(1.0 / lat.std())
    lat = lat * cfg["scaling_factor"]
    _log(log, f"vae done: {vae_steps} steps, recon mse {vae_mse:.4f}, scaling {cfg['scaling_factor']:.4f}")

    ids = sd_tokenize([s.caption for s in scenes])
    empty = sd_tokenize([""])[0]
    cap = AttentionCapture(unet, tuple(cfg["latent_shape"][1:]), cfg["attention"]["resolutions"],
                           query_downscale=cfg["attention"]["query_downscale"])
    grid = cap.grid[0]
    targets = []  # per scene: list of (token positions, mask distribution over grid cells)
    for s in scenes:
        m = _masks(s, grid)
        pos = object_token_positions(s.objects, s.stuff)
        targets.append([(p, m[k] / max(m[k].sum(), 1e-6)) for k, p in enumerate(pos) if m[k].sum() > 0])
    exprs = []  # per scene: (ids, [(positions, mask distribution)]) of each shape-naming expression
    if r.expression_prob > 0:
        for s in scenes:
            m = _masks(s, grid)
            items = [(txt, k, p) for txt, k, p in expression_targets(s) if m[k].sum() > 0]
            ids_e = sd_tokenize([it[0] for it in items]) if items else None
            exprs.append([(ids_e[j], [(p, m[k] / m[k].sum())]) for j, (txt, k, p) in enumerate(items)])
    ac = betas_alphas(cfg["scheduler"])
    params = [{"params": unet.parameters(), "lr": r.unet_lr}, {"params": text.parameters(), "lr": r.text_lr}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    g = torch.Generator().manual_seed(r.seed + 1)
    unet.train()
    text.train()
    t0, step, hist = time.time(), 0, []
    while step < r.unet_steps and time.time() - t0 < r.unet_minutes * 60:
        idx = torch.randint(len(scenes), (r.unet_batch,), generator=g)
        z = lat[idx]
        low = torch.rand(r.unet_batch, generator=g) < r.low_t_fraction
        t = torch.where(low, torch.randint(0, r.low_t_max, (r.unet_batch,), generator=g),
                        torch.randint(0, 1000, (r.unet_batch,), generator=g))
        noise = torch.randn(z.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        drop = torch.rand(r.unet_batch, generator=g) < r.caption_dropout
        batch_ids = torch.where(drop[:, None], empty[None], ids[idx])
        batch_targets = [targets[i] for i in idx.tolist()]
        if r.expression_prob > 0:
            use = torch.rand(r.unet_batch, generator=g) < r.expression_prob
            for b, i in enumerate(idx.tolist()):
                if use[b] and not drop[b] and exprs[i]:
                    e_ids, e_tg = exprs[i][int(torch.randint(len(exprs[i]), (1,), generator=g))]
                    batch_ids[b], batch_targets[b] = e_ids, e_tg
        states = text(batch_ids).last_hidden_state
        pred, attn = cap(noisy, t.float(), states)
        loss_eps = F.mse_loss(pred, noise)
        loss_attn = torch.zeros(())
        if r.attn_weight > 0:
            terms = []
            for b in range(r.unet_batch):
                if drop[b]:
                    continue
                for positions, tgt in batch_targets[b]:
                    tg = torch.from_numpy(tgt)
                    for p in positions:
                        a_map = attn[b, :, p]
                        terms.append(-(tg * torch.log(a_map / a_map.sum() + 1e-8)).sum())
            if terms:
                loss_attn = torch.stack(terms).mean() - float(np.log(grid * grid))  # 0 = uniform map
        loss = loss_eps + r.attn_weight * loss_attn
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        step += 1
        hist.append((loss_eps.item(), loss_attn.item()))
        if step % 50 == 0:
            e, at = np.mean(hist[-50:], 0)
            _log(log, f"unet step {step} eps {e:.4f} attn {at:.3f} {time.time() - t0:.0f}s")
    unet.eval()
    text.eval()
    _log(log, f"unet done: {step} steps")
    metrics: dict[str, Any] = {"vae_steps": vae_steps, "vae_recon_mse": vae_mse, "unet_steps": step,
                               "eps_loss_last200": float(np.mean([h[0] for h in hist[-200:]]))}
    metrics["localization"] = attention_localization(text, vae, unet, cfg, r.eval_scenes, r.eval_t)
    metrics["localization_t300"] = attention_localization(text, vae, unet, cfg, r.eval_scenes, 300)
    metrics["localization_expression"] = attention_localization(text, vae, unet, cfg, r.eval_scenes, r.eval_t,
                                                                prompts="expression")
    _log(log, "localization " + json.dumps(metrics["localization"]))
    # fresh modules (no capture processors in their state) for saving
    state = ldm_state(text, vae, unet)
    config = {"kind": "ldm", "architecture": arch, "ldm_cfg": cfg, "recipe": asdict(r), "metrics": metrics}
    save_checkpoint(out, state, config, dtype=torch.float16)
    _log(log, f"saved {out}")
    return metrics


if __name__ == "__main__":  # python -m edgeseg.train.train_ldm OUT [json recipe overrides]
    import sys

    torch.set_num_threads(1)
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(train_ldm(sys.argv[1], LDMRecipe(**overrides)), indent=2))
