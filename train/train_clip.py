"""``edgeseg train clip``: pretraining of the tiny ToyWorld CLIP (open_clip architecture).

Three terms, each with weight 1 by default:

1. InfoNCE on captions. Every step draws, per scene, one text: the full caption, one object ("a red circle"), a shape ("hexagon"), a
colour + shape, or the stuff ("sand"). All shapes (hexagon and heart too) appear here: this is where the
open-vocabulary knowledge comes from, as web captions are for real CLIP. Several images in a batch can fit
one text ("circle"), so the InfoNCE targets are multi-positive: target[i, j] = text j is true of image i.
2. A SigLIP-style sigmoid loss of every image against every single-word prompt (8 shapes incl. hexagon and
   heart, 8 colours, 6 stuff).
3. A dense term: MaskCLIP patch features against the text of the SEEN labels only (6 seen shapes + 6 stuff),
   the same supervision LSeg gets; hexagon and heart pixels are ignored, so those two words are learnt from
   captions and word prompts alone.

Why 2 and 3: with 1 alone (1800 steps) the tiny ViT named the shape of a single large object at chance while
colours reached 0.95, and all shape words ended with text embeddings of cosine >= 0.99 to each other, which
left LSeg unable to separate them (seen mIoU 0.70, triangle IoU 0). Image-level signals alone (1 + 2, also
with a supervised probe) taught this 5-layer ViT shapes too slowly for a CPU budget; dense labels did not.
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

from .checkpoint import save_checkpoint
from .clip import CLIP_WEIGHTS, clip_config, clip_loss, create_clip, encode_image_features
from .data.toyworld import COLOURS, SEEN_SHAPES, SHAPES, STUFF, Scene, ToyWorld, ToyWorldConfig, label_lut
from .loop import cosine_schedule, optimize, setup_cpu


@dataclass
class ClipRecipe:
    steps: int = 2400
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    pool: int = 20000  # scenes generated once, then sampled with flips
    seed: int = 0
    threads: int = 2
    eval_n: int = 300  # held-out scenes for the zero-shot sanity metric (0: skip)
    max_objects: int = 3  # fewer, larger objects than the segmentation scenes: shapes must be visible
    min_scale: float = 0.15
    # text mix: full caption, "a red circle", "circle", "a circle on sand", "sand"
    text_mix: tuple[float, ...] = (0.2, 0.3, 0.3, 0.1, 0.1)
    vocab_weight: float = 1.0  # weight of the sigmoid loss over single-word prompts (0: plain InfoNCE only)
    dense_weight: float = 1.0  # per-patch loss: MaskCLIP dense features vs text of the SEEN labels only (0: off)
    eval_every: int = 600  # print the zero-shot sanity metric every N steps (0: only at the end)


def _descriptor(scene: Scene, rng: np.random.Generator,
                mix: tuple[float, ...]) -> tuple[str, list[tuple[str | None, str | None]], str | None]:
    """(text, required (colour, shape) pairs, required stuff) for one scene."""
    objs = scene.objects
    kind = rng.choice(["caption", "object", "shape", "colour_shape_on", "stuff"], p=list(mix))
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


DENSE_LABELS = list(SEEN_SHAPES) + list(STUFF)  # never hexagon or heart: those stay caption-only words
_DENSE_LUT = label_lut(DENSE_LABELS)
VOCAB = [(w, [(None, w)], None) for w in SHAPES] + [(w, [(w, None)], None) for w in COLOURS] + \
        [(w, [], w) for w in STUFF]


def vocab_loss(image_emb: torch.Tensor, vocab_emb: torch.Tensor, targets: torch.Tensor,
               scale: float = 10.0, bias: float = -5.0) -> torch.Tensor:
    """Sigmoid (SigLIP-style) loss of B images x V word prompts; targets B x V in {0, 1}."""
    cos = F.normalize(image_emb, dim=-1) @ F.normalize(vocab_emb, dim=-1).t()
    return F.binary_cross_entropy_with_logits(scale * cos + bias, targets)


def dense_loss(dense: torch.Tensor, text: torch.Tensor, semantic: np.ndarray, patch: int,
               temperature: float = 0.07) -> torch.Tensor:
    """Per-patch cross-entropy of B x D x h x w dense features against C label texts (C x D); targets are the
    semantic labels at patch centres mapped to DENSE_LABELS, other classes (unseen shapes) ignored."""
    target = torch.from_numpy(_DENSE_LUT[semantic[:, patch // 2::patch, patch // 2::patch]].astype(np.int64))
    if not (target != 255).any():
        return dense.sum() * 0.0  # nothing labelled (e.g. only unseen shapes on unseen stuff): no signal, no NaN
    logits = torch.einsum("bdhw,cd->bchw", F.normalize(dense, dim=1), F.normalize(text, dim=-1)) / temperature
    return F.cross_entropy(logits, target, ignore_index=255)


def images_to_tensor(images: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """B x H x W x 3 uint8 -> B x 3 x H x W float32 normalized."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def make_pool(split: str, n: int, seed: int, size: int, **config) -> list[Scene]:
    world = ToyWorld(split, seed, ToyWorldConfig(size=size, **config))
    return [world[i] for i in tqdm(range(n), desc=f"ToyWorld {split} scenes", leave=False)]


def train_clip(out: str | Path, recipe: ClipRecipe | None = None, config: str = "toy-tiny",
               on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train and save a checkpoint under ``out``; returns the metrics written into its config."""
    import open_clip

    r = recipe or ClipRecipe()
    setup_cpu(r.threads, r.seed)
    rng = np.random.default_rng(r.seed)
    model = create_clip(config).train()
    cfg = clip_config(config)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    mean, std = CLIP_WEIGHTS[config]["mean"], CLIP_WEIGHTS[config]["std"]
    pool = make_pool("clip", r.pool, r.seed, size, max_objects=r.max_objects, min_scale=r.min_scale)
    images = np.stack([s.image for s in pool])
    semantic = np.stack([s.semantic for s in pool])
    patch = cfg["vision_cfg"]["patch_size"]
    dense_idx = [[v[0] for v in VOCAB].index(w) for w in DENSE_LABELS]
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, betas=(0.9, 0.98))
    sched = cosine_schedule(opt, r.warmup, r.steps)
    losses, t0 = [], time.time()
    bar = tqdm(range(r.steps), desc="train clip")
    for step in bar:
        idx = rng.choice(len(pool), r.batch, replace=False)
        batch, sem = images[idx], semantic[idx]
        flip = rng.random(r.batch) < 0.5
        batch[flip], sem[flip] = batch[flip][:, :, ::-1], sem[flip][:, :, ::-1]
        descs = [_descriptor(pool[i], rng, r.text_mix) for i in idx]
        target = torch.tensor([[_matches(pool[i], need, st) for _, need, st in descs] for i in idx], dtype=torch.float32)
        tokens = open_clip.tokenize([d[0] for d in descs] + [v[0] for v in VOCAB], context_length=ctx)
        feats, _ = encode_image_features(model.visual, images_to_tensor(batch, mean, std))
        img_emb = feats.pooled
        txt_emb = model.encode_text(tokens)
        loss = clip_loss(img_emb, txt_emb[:r.batch], model.logit_scale, target)
        if r.vocab_weight:
            vt = torch.tensor([[_matches(pool[i], need, st) for _, need, st in VOCAB] for i in idx], dtype=torch.float32)
            loss = loss + r.vocab_weight * vocab_loss(img_emb, txt_emb[r.batch:], vt)
        if r.dense_weight:
            loss = loss + r.dense_weight * dense_loss(feats.dense, txt_emb[r.batch:][dense_idx], sem, patch)
        losses.append(optimize(model, opt, sched, loss))
        if on_step is not None:
            on_step(step, losses[-1])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if r.eval_every and (step + 1) % r.eval_every == 0:
            model.eval()
            tqdm.write(f"step {step + 1}: {zero_shot_accuracy(model, config, 200)}")
            model.train()
    model.eval()
    metrics = {"final_loss": float(np.mean(losses[-50:])), "first_loss": float(np.mean(losses[:20])),
               "train_seconds": round(time.time() - t0, 1),
               **(zero_shot_accuracy(model, config, r.eval_n) if r.eval_n else {})}
    save_checkpoint(out, model.state_dict(), {
        "kind": "clip", "architecture": {"name": config, **cfg},
        "preprocessing": {"image_size": [size, size], "mean": list(mean), "std": list(std)},
        "tokenizer": {"type": "clip-bpe", "context_length": ctx},
        "recipe": {**r.__dict__, "data": f"ToyWorld split 'clip' (all shapes, unseen colour-shape combos held out), 1-{r.max_objects} "
                                            f"objects of {r.min_scale}-0.45 of the side"},
        "metrics": metrics}, dtype=torch.float16)
    return metrics


@torch.no_grad()
def zero_shot_accuracy(model: torch.nn.Module, config: str, n: int = 300) -> dict:
    """Name the shape (among all 8 words) of single large objects on held-out scenes: a sanity metric, split
    into seen shapes and the unseen ones (hexagon, heart) whose only supervision is captions."""
    import open_clip

    cfg = clip_config(config)
    pool = make_pool("all", n, 12345, cfg["vision_cfg"]["image_size"], max_objects=1, min_scale=0.3)
    pool = [s for s in pool if s.objects]
    tokens = open_clip.tokenize(list(SHAPES), context_length=cfg["text_cfg"]["context_length"])
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    w = CLIP_WEIGHTS[config]
    img = F.normalize(model.encode_image(images_to_tensor(np.stack([s.image for s in pool]), w["mean"], w["std"])),
                      dim=-1)
    hit = np.array([SHAPES[p] == s.objects[0].shape for p, s in zip((img @ txt.t()).argmax(1).numpy(), pool)])
    unseen = np.array([s.objects[0].shape not in SEEN_SHAPES for s in pool])
    return {"zero_shot_shape_acc_seen": float(hit[~unseen].mean()),
            "zero_shot_shape_acc_unseen": float(hit[unseen].mean()), "zero_shot_n": len(pool)}
