"""Train the ``toy-tiny`` SAM on ToyWorld: promptable masks for objects and the background stuff.

Prompts per image: one point inside an instance (target: that instance), sometimes its box (corners, labels 2
and 3; target: the instance, single-mask output), or one point on the background (target: the stuff region),
so automatic-mask grid points on the background give a stuff mask as real SAM does. Loss as SAM: 20 x focal +
dice on the best of the 3 multimask outputs (point prompts) or the single output (boxes) + MSE between
predicted and actual IoU. Then measures single-point mIoU on held-out ``seen`` objects and the automatic mask
generator's object recall, and writes the checkpoint (fp16) with those metrics.

``python -m edgeseg.train.train_sam OUT [--steps N] [--minutes M] [--eval-only]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg.runtime.sam_auto import AMG_DEFAULTS, generate_masks, postprocess_masks, sam_preprocess

from .checkpoint import save_checkpoint
from .data.toyworld import CLASSES, ToyWorld, ToyWorldConfig
from .sam import KIND, build_sam, embed_points, load_sam, predict_masks, sam_config

IMAGE_SIZE = 96  # ToyWorld side


@dataclass
class SAMRecipe:
    model: str = "toy-tiny"
    steps: int = 1500
    max_minutes: float = 25.0  # wall-clock cap for the optimisation (1 thread)
    batch_images: int = 8
    prompts_per_image: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    p_stuff: float = 0.25  # share of prompts that are background points
    p_box: float = 0.2  # share of object prompts given as boxes
    focal_weight: float = 20.0
    seed: int = 0
    init: str | None = None  # start from this SAM checkpoint (fine-tuning) instead of random weights
    data_offset: int = 0  # first ToyWorld "train" index (a fine-tune continues on unseen training scenes)
    eval_objects: int = 100
    eval_scenes: int = 60
    amg: dict[str, Any] = field(default_factory=lambda: dict(AMG_DEFAULTS))


def _scene_tensors(scene, prep: dict) -> torch.Tensor:
    x, _ = sam_preprocess(scene.image, prep)
    return torch.from_numpy(x[0])


def _sample_prompts(scene, rng: np.random.Generator, recipe: SAMRecipe, scale: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(coords M x 2 x 2 in the input frame, labels M x 2, targets M x H x W float, is_box M bool)."""
    stuff = (scene.semantic == CLASSES.index(scene.stuff))
    coords, labels, targets, boxes = [], [], [], []
    n_obj = len(scene.objects)
    for _ in range(recipe.prompts_per_image):
        use_stuff = n_obj == 0 or (stuff.sum() > 0 and rng.random() < recipe.p_stuff)
        mask = stuff if use_stuff else scene.instance_mask(int(rng.integers(n_obj)))
        ys, xs = np.nonzero(mask)
        if not use_stuff and rng.random() < recipe.p_box:
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
            jit = rng.normal(0, 0.05 * max(x1 - x0, y1 - y0, 4), 4).clip(-4, 4)
            pts = np.array([[x0 + jit[0], y0 + jit[1]], [x1 + jit[2], y1 + jit[3]]], np.float32)
            coords.append(np.clip(pts, 0, IMAGE_SIZE - 1) * scale)
            labels.append([2.0, 3.0])
            boxes.append(True)
        else:
            k = int(rng.integers(len(xs)))
            pt = np.array([xs[k], ys[k]], np.float32) + rng.uniform(0, 1, 2).astype(np.float32) - 0.5
            coords.append(np.array([pt * scale, [0.0, 0.0]], np.float32))
            labels.append([1.0, -1.0])
            boxes.append(False)
        targets.append(mask.astype(np.float32))
    return np.stack(coords), np.array(labels, np.float32), np.stack(targets), np.array(boxes)


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - pt) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(-2).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def _decode(sam, emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sparse = embed_points(sam.prompt_encoder, coords, labels)
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return predict_masks(sam.mask_decoder, emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)


def train_sam(out: str | Path, recipe: SAMRecipe | None = None, log: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Train, save ``out`` (kind ``"sam"``, fp16), evaluate, re-save with metrics; returns the metrics."""
    recipe = recipe or SAMRecipe()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    sam = (load_sam(recipe.init)[0] if recipe.init else build_sam(recipe.model, seed=recipe.seed)).train()
    cfg = sam_config(recipe.model)
    prep = cfg["preprocessing"]
    scale = prep["img_size"] / IMAGE_SIZE
    world = ToyWorld("train", recipe.seed, ToyWorldConfig(size=IMAGE_SIZE))
    opt = torch.optim.AdamW(sam.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 *
                                              (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps)))
    t0, index, step = time.time(), recipe.data_offset, 0
    for step in range(recipe.steps):
        scenes = [world[index + b] for b in range(recipe.batch_images)]
        index += recipe.batch_images
        images = torch.stack([_scene_tensors(s, prep) for s in scenes])
        parts = [_sample_prompts(s, rng, recipe, scale) for s in scenes]
        coords = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        target = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        is_box = torch.from_numpy(np.concatenate([p[3] for p in parts]))
        emb = sam.image_encoder(images).repeat_interleave(recipe.prompts_per_image, dim=0)
        low, iou_pred = _decode(sam, emb, coords, labels)
        logits = F.interpolate(low, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        tgt = target.unsqueeze(1).expand_as(logits)
        per = recipe.focal_weight * _focal(logits, tgt) + _dice(logits, tgt)  # N x K
        with torch.no_grad():
            hard = logits > 0
            inter = (hard & (tgt > 0.5)).flatten(-2).sum(-1).float()
            union = (hard | (tgt > 0.5)).flatten(-2).sum(-1).float()
            iou_true = inter / union.clamp(min=1)
        multi = per[:, 1:].min(dim=1).values
        mask_loss = torch.where(is_box, per[:, 0], multi).mean()
        iou_err = (iou_pred - iou_true) ** 2
        iou_loss = torch.where(is_box, iou_err[:, 0], iou_err[:, 1:].mean(dim=1)).mean()
        loss = mask_loss + iou_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        sched.step()
        elapsed = (time.time() - t0) / 60
        if step % 25 == 0:
            best = iou_true[:, 1:].max(dim=1).values
            log(f"step {step} loss {loss.item():.4f} mask {mask_loss.item():.4f} iou_mse {iou_loss.item():.4f} "
                f"best_iou {best[~is_box].mean().item():.3f} lr {sched.get_last_lr()[0]:.2e} {elapsed:.1f} min")
        if elapsed > recipe.max_minutes:
            log(f"time cap {recipe.max_minutes} min reached at step {step}")
            break
    sam.eval()
    config = dict(cfg, recipe=asdict(recipe), steps_done=step + 1, train_minutes=round((time.time() - t0) / 60, 2))
    save_checkpoint(out, sam.state_dict(), config, dtype=torch.float16)
    log(f"saved {out}")
    sam, _ = load_sam(out)  # evaluate what was saved (fp16 weights)
    metrics = evaluate_sam(sam, cfg, recipe)
    log(json.dumps(metrics))
    save_checkpoint(out, sam.state_dict(), dict(config, metrics=metrics), dtype=torch.float16)
    return metrics


def torch_decoder(sam) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``run_decoder`` for :func:`edgeseg.runtime.sam_auto.generate_masks` backed by the torch model (feeds
    and outputs named as the ``sam_decoder`` component)."""

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        coords = torch.from_numpy(feeds["point_coords"])
        emb = torch.from_numpy(feeds["image_embeddings"]).expand(coords.shape[0], -1, -1, -1)
        low, iou = _decode(sam, emb, coords, torch.from_numpy(feeds["point_labels"]))
        return {"low_res_masks": low.numpy(), "iou_predictions": iou.numpy()}

    return run


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its border (a deterministic 'click' on the object)."""
    m = mask.astype(np.int32)
    dist = m.copy()
    for _ in range(max(mask.shape)):  # grassfire distance, 4-neighbourhood
        pad = np.pad(dist, 1)
        nxt = m * (np.minimum.reduce([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]) + 1)
        if np.array_equal(nxt, dist):
            break
        dist = nxt
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


@torch.no_grad()
def evaluate_sam(sam, cfg: dict[str, Any], recipe: SAMRecipe | None = None) -> dict[str, Any]:
    """Single-point mIoU (most interior pixel, highest predicted-IoU multimask output) on ``eval_objects``
    held-out ``seen`` objects, and AMG recall (objects of area >= 30 px matched by an AMG mask at IoU >= 0.7)."""
    recipe = recipe or SAMRecipe()
    prep = cfg["preprocessing"]
    world = ToyWorld("seen", 0, ToyWorldConfig(size=IMAGE_SIZE))
    run = torch_decoder(sam)
    ious, i = [], 0
    while len(ious) < recipe.eval_objects:
        scene = world[i]
        i += 1
        x, hw = sam_preprocess(scene.image, prep)
        emb = sam.image_encoder(torch.from_numpy(x)).numpy()
        s = prep["img_size"] / IMAGE_SIZE
        for k in range(len(scene.objects)):
            if len(ious) >= recipe.eval_objects:
                break
            px, py = interior_point(scene.instance_mask(k))
            out = run({"image_embeddings": emb, "point_coords": np.array([[[px * s, py * s], [0, 0]]], np.float32),
                       "point_labels": np.array([[1, -1]], np.float32)})
            best = 1 + int(np.argmax(out["iou_predictions"][0, 1:]))
            pred = postprocess_masks(out["low_res_masks"][:, best], hw, (IMAGE_SIZE, IMAGE_SIZE),
                                     prep["img_size"])[0] > 0
            gt = scene.instance_mask(k)
            ious.append((pred & gt).sum() / max((pred | gt).sum(), 1))
    found = total = 0
    for j in range(recipe.eval_scenes):
        scene = world[1000 + j]
        x, hw = sam_preprocess(scene.image, prep)
        emb = sam.image_encoder(torch.from_numpy(x)).numpy()
        masks, _, _ = generate_masks(run, emb, (IMAGE_SIZE, IMAGE_SIZE), hw, recipe.amg, img_size=prep["img_size"])
        for k, obj in enumerate(scene.objects):
            if obj.area < 30:
                continue
            total += 1
            gt = scene.instance_mask(k)
            if len(masks):
                iou = (masks & gt).sum((1, 2)) / np.maximum((masks | gt).sum((1, 2)), 1)
                found += bool(iou.max() >= 0.7)
    return {"point_miou": round(float(np.mean(ious)), 4), "point_objects": len(ious),
            "amg_recall": round(found / max(total, 1), 4), "amg_objects": total, "amg_scenes": recipe.eval_scenes,
            "amg": dict(recipe.amg), "split": "seen"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=SAMRecipe.steps)
    ap.add_argument("--minutes", type=float, default=SAMRecipe.max_minutes)
    ap.add_argument("--lr", type=float, default=SAMRecipe.lr)
    ap.add_argument("--warmup", type=int, default=SAMRecipe.warmup)
    ap.add_argument("--batch-images", type=int, default=SAMRecipe.batch_images)
    ap.add_argument("--prompts-per-image", type=int, default=SAMRecipe.prompts_per_image)
    ap.add_argument("--init", default=None, help="fine-tune this SAM checkpoint")
    ap.add_argument("--data-offset", type=int, default=0, help="first ToyWorld train scene index")
    ap.add_argument("--eval-only", action="store_true", help="re-measure an existing checkpoint and update it")
    ap.add_argument("--log", default=None, help="also append progress lines to this file")
    ap.add_argument("--amg", default=None, help='JSON overrides of the AMG settings, e.g. \'{"pred_iou_thresh": 0.7}\'')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, flush=True)
        if a.log:
            with open(a.log, "a") as f:
                f.write(msg + "\n")

    if a.eval_only:
        from .checkpoint import load_checkpoint

        sam, cfg = load_sam(a.out)
        _, config = load_checkpoint(a.out, KIND)
        recipe = SAMRecipe(**{k: v for k, v in config.get("recipe", {}).items() if k in SAMRecipe.__annotations__})
        recipe.amg = dict(AMG_DEFAULTS, **(json.loads(a.amg) if a.amg else {}))
        metrics = evaluate_sam(sam, cfg, recipe)
        log(json.dumps(metrics))
        save_checkpoint(a.out, sam.state_dict(), dict(config, metrics=metrics), dtype=torch.float16)
        return
    recipe = SAMRecipe(steps=a.steps, max_minutes=a.minutes, lr=a.lr, warmup=a.warmup, batch_images=a.batch_images,
                       prompts_per_image=a.prompts_per_image, init=a.init, data_offset=a.data_offset)
    recipe.amg.update(json.loads(a.amg) if a.amg else {})
    train_sam(a.out, recipe, log)


if __name__ == "__main__":
    main()
