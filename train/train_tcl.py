"""``edgeseg train tcl``: TCL on the frozen ToyWorld CLIP from image-caption pairs only (no masks anywhere).

Data: ToyWorld scenes of the ``clip`` split (all eight shapes, the unseen colour-shape pairs held out), each
paired every step with one text drawn as ``train_clip`` draws them: the caption, one object ("a red
circle"), a shape word, "a circle on sand" or the stuff word. Several images in a batch can fit one text, so
the contrastive targets are multi-positive. Segmentation masks are never read.

Caveat (reported with every figure): the frozen CLIP ``clip_toy`` itself was pretrained with a dense term on
the SEEN labels (see ``train_clip``), so its MaskCLIP features already carry some seen-label supervision; the
unseen shapes (hexagon, heart) never had dense labels anywhere.

The checkpoint stores only the trainable parts (masker block copy, decoder, projection, w, b, temperatures)
and names the frozen CLIP checkpoint with its sha256.
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
from .data.toyworld import SEEN_SHAPES, SHAPES, STUFF, UNSEEN_SHAPES, ToyWorld, ToyWorldConfig, label_lut
from .loop import cosine_schedule, optimize, setup_cpu
from .tcl import LOSS_WEIGHTS, PAMR_DILATIONS, PAMR_ITERATIONS, TCL, TCL_CONFIGS, TCLConfig
from .train_clip import _descriptor, _matches, images_to_tensor, make_pool

TEMPLATE = "{}"
BG_THRESHOLD = 0.4  # the paper's background threshold (with PAMR); used only when the caller asks for it


@dataclass
class TCLRecipe:
    steps: int = 700
    batch: int = 16
    lr: float = 3e-3  # the paper's 3e-4 is for 50k steps; ~1.5k CPU steps need more
    weight_decay: float = 0.05
    warmup: int = 50
    decoder_lr_mult: float = 1.0  # learning-rate factor of the grounding decoder (gates start at 0)
    pool: int = 3000  # scenes generated once; their frozen CLIP tokens are computed once too (no flips)
    seed: int = 0
    threads: int = 1
    max_objects: int = 2  # few, large objects: a caption word then names most of one region
    min_scale: float = 0.15
    # text mix as train_clip draws it: full caption, "a red circle", "circle", "a circle on sand", "sand"
    # Stuff words cover ~80 % of a scene, shape words ~10 %: this mix puts the true mean positive area near the
    # area prior (0.4, a batch-level term); with more shape words the prior inflates shape masks into the stuff.
    text_mix: tuple[float, ...] = (0.05, 0.2, 0.3, 0.0, 0.45)
    image_tcl: float = LOSS_WEIGHTS["image_tcl"]
    feature_tcl: float = LOSS_WEIGHTS["feature_tcl"]
    area: float = LOSS_WEIGHTS["area"]
    tv: float = LOSS_WEIGHTS["tv"]
    eval_n: int = 100  # scenes per split for the PyTorch mIoU written into the checkpoint (0: skip)


class TextBank:
    """Frozen CLIP text embeddings (unit norm), computed once per distinct text."""

    def __init__(self, clip: torch.nn.Module, context_length: int, template: str = TEMPLATE):
        self.clip, self.ctx, self.template, self.cache = clip, context_length, template, {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        new = sorted({t for t in texts if t not in self.cache})
        if new:
            tokens = open_clip.tokenize([self.template.format(t) for t in new], context_length=self.ctx)
            for t, e in zip(new, F.normalize(self.clip.encode_text(tokens), dim=-1)):
                self.cache[t] = e
        return torch.stack([self.cache[t] for t in texts])


def load_tcl(folder: str | Path) -> tuple[TCL, dict]:
    """(TCL model with its frozen CLIP, checkpoint config) from a folder written by :func:`train_tcl`."""
    folder = resolve_checkpoint(folder)
    state, config = load_checkpoint(folder, "tcl")
    clip = load_frozen_clip(folder, config["clip"])
    model = TCL(TCLConfig.from_dict(config["architecture"]), clip)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("clip.")]
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit the TCL architecture: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    return model.eval(), config


@torch.no_grad()
def evaluate_tcl_torch(model: TCL, bank: TextBank, split: str, labels: list[str], n: int = 100, seed: int = 999,
                       size: int = 96, batch: int = 25) -> float:
    """Confusion-matrix mIoU of the PyTorch model (argmax of the inference masks, no PAMR)."""
    from edgeseg.runtime.metrics import ConfusionMatrix

    w = CLIP_WEIGHTS[model.config.clip]
    text, lut, cm = bank(labels), label_lut(labels), ConfusionMatrix(len(labels))
    world = ToyWorld(split, seed, ToyWorldConfig(size=size))
    for s in range(0, n, batch):
        scenes = [world[i] for i in range(s, min(n, s + batch))]
        masks = model(images_to_tensor(np.stack([x.image for x in scenes]), w["mean"], w["std"]), text)
        masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
        for sc, pred in zip(scenes, masks.argmax(1).numpy()):
            cm.update(lut[sc.semantic], pred)
    return cm.miou()


def eval_splits(model: TCL, bank: TextBank, n: int, size: int) -> dict[str, float]:
    sets = {"seen": ("seen", list(SEEN_SHAPES) + list(STUFF)), "unseen": ("unseen", list(UNSEEN_SHAPES) + list(STUFF)),
            "generalized": ("all", list(SHAPES) + list(STUFF))}
    return {f"torch_miou_{k}_nopamr": evaluate_tcl_torch(model, bank, s, labels, n, size=size)
            for k, (s, labels) in sets.items()}


def train_tcl(out: str | Path, clip: str | Path = "clip_toy", recipe: TCLRecipe | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train TCL on the frozen CLIP checkpoint ``clip`` and save it under ``out``; returns its metrics.
    ``recipe.steps = 0`` saves the untrained model (grounding embeddings = MaskCLIP's: the baseline)."""
    r = recipe or TCLRecipe()
    setup_cpu(r.threads, r.seed)
    rng = np.random.default_rng(r.seed)
    gen = torch.Generator().manual_seed(r.seed)
    clip_model, clip_cfg = load_clip(clip)
    arch = clip_cfg["architecture"]["name"]
    model = TCL(TCL_CONFIGS[arch], clip_model)
    ctx = clip_cfg["tokenizer"]["context_length"]
    size = clip_cfg["preprocessing"]["image_size"][0]
    mean, std = CLIP_WEIGHTS[arch]["mean"], CLIP_WEIGHTS[arch]["std"]
    bank = TextBank(clip_model, ctx)
    weights = {"image_tcl": r.image_tcl, "feature_tcl": r.feature_tcl, "area": r.area, "tv": r.tv}
    dec = [p for n, p in model.named_parameters() if n.startswith("decoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("clip.", "decoder."))]
    opt = torch.optim.AdamW([{"params": rest, "lr": r.lr}, {"params": dec, "lr": r.lr * r.decoder_lr_mult}],
                            weight_decay=r.weight_decay)
    sched = cosine_schedule(opt, r.warmup, max(1, r.steps))
    history: dict[str, list[float]] = {k: [] for k in ["total", *weights]}
    t0 = time.time()
    if r.steps:
        pool = make_pool("clip", r.pool, r.seed, size, max_objects=r.max_objects, min_scale=r.min_scale)
        images = np.stack([s.image for s in pool])
        tokens = torch.cat([model.clip_tokens(images_to_tensor(images[i:i + 250], mean, std))[0].half()
                            for i in tqdm(range(0, len(pool), 250), desc="frozen CLIP tokens", leave=False)])
        model.train()
        bar = tqdm(range(r.steps), desc="train tcl")
        for step in bar:
            idx = rng.choice(len(pool), r.batch, replace=False)
            descs = [_descriptor(pool[i], rng, r.text_mix) for i in idx]
            targets = torch.tensor([[_matches(pool[i], need, st) for _, need, st in descs] for i in idx],
                                   dtype=torch.float32)
            terms = model.losses(images_to_tensor(images[idx], mean, std), bank([d[0] for d in descs]), targets, gen,
                                 tokens[torch.from_numpy(idx)].float())
            loss = sum(weights[k] * v for k, v in terms.items())
            history["total"].append(optimize(model, opt, sched, loss))
            for k, v in terms.items():
                history[k].append(float(v.detach()))
            if on_step is not None:
                on_step(step, {k: history[k][-1] for k in history})
            if step % 20 == 0:
                bar.set_postfix({k: f"{np.mean(v[-20:]):.3f}" for k, v in history.items()})
        model.eval()
    metrics: dict = {"train_seconds": round(time.time() - t0, 1)}
    for k, v in history.items():
        if v:
            metrics[f"first_{k}"], metrics[f"final_{k}"] = float(np.mean(v[:20])), float(np.mean(v[-50:]))
    metrics.update(w=model.w.item(), b=model.b.item(), gates=[blk.gate.item() for blk in model.decoder])
    if r.eval_n:
        metrics.update(eval_splits(model, bank, r.eval_n, size))
    save_checkpoint(out, model.trainable_state_dict(), {
        "kind": "tcl", "architecture": model.config.to_dict(),
        "clip": frozen_clip_ref(clip),
        "text_encoder": {"template": TEMPLATE, "frozen": True},
        "preprocessing": clip_preprocessing(arch, clip_model),
        "tokenizer": {"type": "clip-bpe", "context_length": ctx},
        "inference": {"bg_threshold": BG_THRESHOLD, "pamr_iterations": PAMR_ITERATIONS,
                      "pamr_dilations": list(PAMR_DILATIONS)},
        "recipe": {**r.__dict__, "loss_weights": weights,
                   "data": f"ToyWorld split 'clip' image-caption pairs (all shapes, unseen colour-shape combos held "
                           f"out), 1-{r.max_objects} objects of {r.min_scale}-0.45 of the side; no masks"},
        "metrics": metrics}, dtype=torch.float16)
    return metrics
