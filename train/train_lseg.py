"""``edgeseg train lseg``: LSeg on ToyWorld with the seen labels only.

The image tower starts from the ToyWorld CLIP (``clip_toy``) and is fine-tuned at a tenth of the decoder's
learning rate; the text tower stays frozen, so label embeddings come from CLIP and unseen words still land in
the same space. Training scenes hold seen shapes only and no unseen colour-shape combination.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from .clip import CLIP_WEIGHTS, clip_preprocessing, frozen_clip_ref, load_clip, load_frozen_clip
from .data.toyworld import IGNORE, SEEN_SHAPES, STUFF, UNSEEN_SHAPES, ToyWorld, ToyWorldConfig, label_lut
from .lseg import LSEG_CONFIGS, LSeg, LSegConfig
from .loop import cosine_schedule, optimize, setup_cpu
from .train_clip import images_to_tensor, make_pool

TEMPLATE = "{}"


@dataclass
class LSegRecipe:
    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3  # decoder; the image tower gets lr * encoder_lr_mult
    encoder_lr_mult: float = 0.1
    weight_decay: float = 0.01
    warmup: int = 100
    pool: int = 8000
    seed: int = 0
    threads: int = 2
    init: str | None = None  # continue from this LSeg checkpoint (its recipe is kept under "previous")
    eval_n: int = 100  # scenes per split for the PyTorch mIoU written into the checkpoint (0: skip)


@torch.no_grad()
def text_embeddings(clip: torch.nn.Module, labels: list[str], context_length: int,
                    template: str = TEMPLATE) -> torch.Tensor:
    import open_clip

    tokens = open_clip.tokenize([template.format(x) for x in labels], context_length=context_length)
    return F.normalize(clip.encode_text(tokens), dim=-1)


def load_lseg(folder: str | Path) -> tuple[LSeg, torch.nn.Module, dict]:
    """(LSeg model, frozen CLIP whose text tower it uses, LSeg config) from a checkpoint folder."""
    folder = resolve_checkpoint(folder)
    state, config = load_checkpoint(folder, "lseg")
    clip = load_frozen_clip(folder, config["text_encoder"], "text encoder checkpoint")
    model = LSeg(LSegConfig.from_dict(config["architecture"]))
    model.load_state_dict(state)
    return model.eval(), clip, config


@torch.no_grad()
def evaluate_torch(model: LSeg, clip: torch.nn.Module, ctx: int, split: str, labels: list[str], n: int = 100,
                   seed: int = 999, size: int = 96, batch: int = 16) -> float:
    """Confusion-matrix mIoU of the PyTorch model on a ToyWorld split (pixels outside ``labels`` ignored)."""
    from edgeseg.runtime.metrics import ConfusionMatrix

    w = CLIP_WEIGHTS[model.config.clip]
    text = text_embeddings(clip, labels, ctx)
    lut, cm = label_lut(labels), ConfusionMatrix(len(labels))
    world = ToyWorld(split, seed, ToyWorldConfig(size=size))
    for s in range(0, n, batch):
        scenes = [world[i] for i in range(s, min(n, s + batch))]
        logits = model(images_to_tensor(np.stack([x.image for x in scenes]), w["mean"], w["std"]), text)
        for sc, pred in zip(scenes, logits.argmax(1).numpy()):
            cm.update(lut[sc.semantic], pred)
    return cm.miou()


def train_lseg(out: str | Path, clip_checkpoint: str | Path = "clip_toy", recipe: LSegRecipe | None = None,
               config: str = "toy-tiny",
               on_step: Callable[[int, float], None] | None = None) -> dict:
    r = recipe or LSegRecipe()
    setup_cpu(r.threads, r.seed)
    rng = np.random.default_rng(r.seed)
    clip, clip_cfg = load_clip(clip_checkpoint)
    for p in clip.parameters():
        p.requires_grad_(False)
    cfg = LSEG_CONFIGS[config]
    model = LSeg(cfg)
    model.visual.load_state_dict(clip.visual.state_dict())
    previous = None
    if r.init:
        state, init_cfg = load_checkpoint(r.init)
        model.load_state_dict(state)
        previous = init_cfg["recipe"]
    ctx = clip_cfg["tokenizer"]["context_length"]
    size = clip_cfg["preprocessing"]["image_size"][0]
    w = CLIP_WEIGHTS[cfg.clip]
    labels = list(SEEN_SHAPES) + list(STUFF)
    text, lut = text_embeddings(clip, labels, ctx), label_lut(labels)
    pool = make_pool("train", r.pool, r.seed, size)
    images = np.stack([s.image for s in pool])
    targets = np.stack([lut[s.semantic] for s in pool])
    enc = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    dec = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": r.lr * r.encoder_lr_mult}, {"params": dec, "lr": r.lr}],
                            weight_decay=r.weight_decay)
    sched = cosine_schedule(opt, r.warmup, r.steps)
    model.train()
    losses, t0 = [], time.time()
    bar = tqdm(range(r.steps), desc="train lseg")
    for step in bar:
        idx = rng.choice(len(pool), r.batch, replace=False)
        x, y = images[idx].copy(), targets[idx].copy()
        flip = rng.random(r.batch) < 0.5
        x[flip], y[flip] = x[flip][:, :, ::-1], y[flip][:, :, ::-1]
        logits = model(images_to_tensor(x, w["mean"], w["std"]), text)
        loss = F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64)), ignore_index=IGNORE)
        losses.append(optimize(model, opt, sched, loss))
        if on_step is not None:
            on_step(step, losses[-1])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    metrics = {
        "first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-50:])),
        "train_seconds": round(time.time() - t0, 1),
    }
    if r.eval_n:
        metrics["torch_miou_seen"] = evaluate_torch(model, clip, ctx, "seen", labels, r.eval_n, size=size)
        metrics["torch_miou_unseen_zero_shot"] = evaluate_torch(model, clip, ctx, "unseen",
                                                                list(UNSEEN_SHAPES) + list(STUFF), r.eval_n, size=size)
    save_checkpoint(out, model.state_dict(), {
        "kind": "lseg", "architecture": cfg.to_dict(),
        "text_encoder": frozen_clip_ref(clip_checkpoint, template=TEMPLATE),
        "preprocessing": clip_preprocessing(cfg.clip, model),
        "tokenizer": {"type": "clip-bpe", "context_length": ctx},
        "labels_trained": labels,
        "recipe": {**r.__dict__, "data": "ToyWorld split 'train' (seen shapes only)", "previous": previous},
        "metrics": metrics}, dtype=torch.float16)
    return metrics
