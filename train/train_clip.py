"""``edgeseg train clip``: contrastive pretraining of the tiny CLIP on ToyWorld captions.

Every step draws, per scene, one text: the full caption, one object ("a red circle"), a shape ("hexagon"), a
colour + shape, or the stuff ("sand"). All shapes (hexagon and heart too) appear here: this is where the
open-vocabulary knowledge comes from, as web captions are for real CLIP. Several images in a batch can fit
one text ("circle"), so the InfoNCE targets are multi-positive: target[i, j] = text j is true of image i.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .clip import CLIP_WEIGHTS, clip_config, clip_loss, create_clip
from .data.toyworld import Scene, ToyWorld, ToyWorldConfig


@dataclass
class ClipRecipe:
    steps: int = 1800
    batch: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 100
    pool: int = 20000  # scenes generated once, then sampled with flips
    seed: int = 0
    threads: int = 2
    eval_n: int = 300  # held-out scenes for the zero-shot sanity metric (0: skip)


def _descriptor(scene: Scene, rng: np.random.Generator) -> tuple[str, list[tuple[str | None, str | None]], str | None]:
    """(text, required (colour, shape) pairs, required stuff) for one scene."""
    objs = scene.objects
    kind = rng.choice(["caption", "object", "shape", "colour_shape_on", "stuff"], p=[0.4, 0.2, 0.2, 0.1, 0.1])
    if kind == "caption" or not objs:
        return scene.caption, [(o.colour, o.shape) for o in objs], scene.stuff
    o = objs[rng.integers(len(objs))]
    if kind == "object":
        return f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.shape}", [(o.colour, o.shape)], None
    if kind == "shape":
        return o.shape, [(None, o.shape)], None
    if kind == "colour_shape_on":
        return f"a {o.shape} on {scene.stuff}", [(None, o.shape)], scene.stuff
    return scene.stuff, [], scene.stuff


def _matches(scene: Scene, need: list[tuple[str | None, str | None]], stuff: str | None) -> bool:
    if stuff is not None and scene.stuff != stuff:
        return False
    have = {(o.colour, o.shape) for o in scene.objects}
    return all(any((c is None or c == hc) and (s is None or s == hs) for hc, hs in have) for c, s in need)


def images_to_tensor(images: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """B x H x W x 3 uint8 -> B x 3 x H x W float32 normalized."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def make_pool(split: str, n: int, seed: int, size: int) -> list[Scene]:
    world = ToyWorld(split, seed, ToyWorldConfig(size=size))
    return [world[i] for i in tqdm(range(n), desc=f"ToyWorld {split} scenes", leave=False)]


def train_clip(out: str | Path, recipe: ClipRecipe | None = None, config: str = "toy-tiny",
               on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train and save a checkpoint under ``out``; returns the metrics written into its config."""
    import open_clip

    r = recipe or ClipRecipe()
    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    torch.set_flush_denormal(True)  # denormals made CPU steps ~8x slower after a few dozen steps
    rng = np.random.default_rng(r.seed)
    model = create_clip(config).train()
    cfg = clip_config(config)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    mean, std = CLIP_WEIGHTS[config]["mean"], CLIP_WEIGHTS[config]["std"]
    pool = make_pool("clip", r.pool, r.seed, size)
    images = np.stack([s.image for s in pool])
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / r.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, r.steps) / r.steps)))
    losses, t0 = [], time.time()
    bar = tqdm(range(r.steps), desc="train clip")
    for step in bar:
        idx = rng.choice(len(pool), r.batch, replace=False)
        batch = images[idx]
        flip = rng.random(r.batch) < 0.5
        batch[flip] = batch[flip][:, :, ::-1]
        descs = [_descriptor(pool[i], rng) for i in idx]
        target = torch.tensor([[_matches(pool[i], need, st) for _, need, st in descs] for i in idx], dtype=torch.float32)
        target = target / target.sum(1, keepdim=True)
        tokens = open_clip.tokenize([d[0] for d in descs], context_length=ctx)
        img_emb = model.encode_image(images_to_tensor(batch, mean, std))
        txt_emb = model.encode_text(tokens)
        loss = clip_loss(img_emb, txt_emb, model.logit_scale, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    metrics = {"final_loss": float(np.mean(losses[-50:])), "first_loss": float(np.mean(losses[:20])),
               "train_seconds": round(time.time() - t0, 1),
               **(zero_shot_accuracy(model, config, r.eval_n) if r.eval_n else {})}
    save_checkpoint(out, model.state_dict(), {
        "kind": "clip", "architecture": {"name": config, **cfg},
        "preprocessing": {"image_size": [size, size], "mean": list(mean), "std": list(std)},
        "tokenizer": {"type": "clip-bpe", "context_length": ctx},
        "recipe": {**r.__dict__, "data": "ToyWorld split 'clip' (all shapes, unseen colour-shape combos held out)"},
        "metrics": metrics}, dtype=torch.float16)
    return metrics


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, config: str, n: int = 300) -> dict:
    """Classify the largest object's shape of held-out single-scene images by text prompts: a sanity metric."""
    import open_clip

    from .data.toyworld import SHAPES

    cfg = clip_config(config)
    pool = make_pool("all", n, 12345, cfg["vision_cfg"]["image_size"])
    pool = [s for s in pool if s.objects]
    tokens = open_clip.tokenize(list(SHAPES), context_length=cfg["text_cfg"]["context_length"])
    txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    w = CLIP_WEIGHTS[config]
    img = torch.nn.functional.normalize(model.encode_image(images_to_tensor(np.stack([s.image for s in pool]),
                                                                             w["mean"], w["std"])), dim=-1)
    pred = (img @ txt.t()).argmax(1).numpy()
    present = [{SHAPES.index(o.shape) for o in s.objects} for s in pool]
    return {"zero_shot_shape_in_image_acc": float(np.mean([p in ps for p, ps in zip(pred, present)]))}
