"""``edgeseg train ifseg``: the IFSeg decoder from category words alone, over a frozen CLIP.

The vocabulary is ToyWorld's 14 class words (8 shapes incl. hexagon and heart + 6 stuff) through the prompt
template; their embeddings come from the frozen CLIP text tower. Every step builds an artificial batch
(:func:`edgeseg.train.ifseg.artificial_batch`): no image is ever used in training. The checkpoint holds only
the decoder and names the frozen CLIP checkpoint (and its sha256) whose image and text towers it runs on.

Recipe selection (the only place images enter, as validation): noise 0.6 / 1.2 / 2.0 / 3.0, a vocabulary-blend
augmentation, grids using only 1-4 of the C categories, and 600 vs 2000 steps were compared by PyTorch mIoU on ToyWorld seed 999 (100 scenes per split),
apart from the evaluation seeds; the defaults are the best of those.

Caveat, stated wherever figures are reported: the bundled ``clip_toy`` was itself pretrained with a dense term
on the SEEN labels (see ``train/train_clip.py``), so its dense features already know the seen shapes and the
stuff; the IFSeg decoder adds only what it learns from words. The ``unseen`` split (hexagon and heart never had
dense labels anywhere) is the cleanest figure.
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
from .clip import (CLIP_WEIGHTS, clip_config, clip_preprocessing, encode_image_features, frozen_clip_ref,
                   load_clip, load_frozen_clip)
from .data.toyworld import CLASSES, ToyWorld, ToyWorldConfig, label_lut
from .ifseg import IFSEG_CONFIGS, IFSegConfig, IFSegDecoder, artificial_batch, ifseg_loss, knn_refine
from .loop import cosine_schedule, optimize, setup_cpu
from .train_clip import images_to_tensor
from .train_lseg import text_embeddings

TEMPLATE = "{}"
KNN_DEFAULTS = {"k": 3, "iterations": 25}


@dataclass
class IFSegRecipe:
    steps: int = 600  # 2000 steps: validation mIoU 0.005-0.013 lower on every split (drifts from MaskCLIP)
    batch: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    max_cells: int = 12  # S: U, V uniform in 1..S (the feature grid is 12 x 12)
    min_categories: int = 2  # C per step uniform in min..len(vocabulary)
    noise: float = 3.0  # Gaussian noise norm on each artificial feature pixel (unit text embeddings)
    offset: float = 1.0  # norm of one random shared vector per sample (modality-gap stand-in)
    mix: float = 0.5  # up to this fraction of a feature pixel taken from another category
    seed: int = 0
    threads: int = 1
    eval_n: int = 100  # scenes per split (seed 999, apart from eval seeds) for the PyTorch mIoU in the checkpoint


def vocabulary() -> list[str]:
    """The words the decoder is trained on: ToyWorld's 14 class names (no image, no mask)."""
    return list(CLASSES)


def load_ifseg(folder: str | Path) -> tuple[IFSegDecoder, torch.nn.Module, dict]:
    """(decoder, frozen CLIP whose towers it runs on, IFSeg config) from a checkpoint folder."""
    folder = resolve_checkpoint(folder)
    state, config = load_checkpoint(folder, "ifseg")
    clip = load_frozen_clip(folder, config["clip"])
    decoder = IFSegDecoder(IFSegConfig.from_dict(config["architecture"]))
    decoder.load_state_dict(state)
    return decoder.eval(), clip, config


@torch.no_grad()
def dense_features(clip: torch.nn.Module, images: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """B x H x W x 3 uint8 -> unit-norm MaskCLIP features B x D x h x w (the ``ifseg_encoder`` output)."""
    feats, _ = encode_image_features(clip.visual, images_to_tensor(images, mean, std))
    return F.normalize(feats.dense, dim=1)


@torch.no_grad()
def predict_torch(decoder: IFSegDecoder, feats: torch.Tensor, text: torch.Tensor, out_size: tuple[int, int],
                  knn: dict | None = None) -> torch.Tensor:
    """Label maps B x H x W: softmax at the feature grid, optional kNN refinement, bilinear resize, argmax (the
    runtime's order of operations)."""
    probs = decoder(feats, text).softmax(1)
    if knn is not None:
        probs = knn_refine(probs, feats, knn["k"], knn["iterations"])
    return F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False).argmax(1)


def evaluate_torch(decoder: IFSegDecoder, clip: torch.nn.Module, split: str, labels: list[str], n: int = 100,
                   seed: int = 999, knn: dict | None = None, size: int = 96, batch: int = 25) -> float:
    """Confusion-matrix mIoU in PyTorch on a ToyWorld split (pixels outside ``labels`` ignored)."""
    from edgeseg.runtime.metrics import ConfusionMatrix

    w = CLIP_WEIGHTS[decoder.config.clip]
    ctx = clip_config(decoder.config.clip)["text_cfg"]["context_length"]
    text = text_embeddings(clip, labels, ctx, TEMPLATE)
    lut, cm = label_lut(labels), ConfusionMatrix(len(labels))
    world = ToyWorld(split, seed, ToyWorldConfig(size=size))
    for s in range(0, n, batch):
        scenes = [world[i] for i in range(s, min(n, s + batch))]
        feats = dense_features(clip, np.stack([x.image for x in scenes]), w["mean"], w["std"])
        for sc, pred in zip(scenes, predict_torch(decoder, feats, text, (size, size), knn).numpy()):
            cm.update(lut[sc.semantic], pred)
    return cm.miou()


def train_ifseg(out: str | Path, clip: str | Path = "clip_toy", recipe: IFSegRecipe | None = None,
                config: str = "toy-tiny", on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the decoder on artificial word grids and save it under ``out``; returns its metrics."""
    r = recipe or IFSegRecipe()
    setup_cpu(r.threads, r.seed)
    gen = torch.Generator().manual_seed(r.seed)
    clip_model, clip_cfg = load_clip(clip)
    for p in clip_model.parameters():
        p.requires_grad_(False)
    cfg = IFSEG_CONFIGS[config]
    decoder = IFSegDecoder(cfg).train()
    ctx = clip_cfg["tokenizer"]["context_length"]
    size = clip_cfg["preprocessing"]["image_size"][0]
    words = vocabulary()
    vocab = text_embeddings(clip_model, words, ctx, TEMPLATE)
    opt = torch.optim.AdamW(decoder.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = cosine_schedule(opt, r.warmup, max(1, r.steps))
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(range(r.steps), desc="train ifseg", mininterval=5)
    for step in bar:
        c = int(torch.randint(r.min_categories, len(words) + 1, (1,), generator=gen))
        feats, text, target = artificial_batch(vocab, r.batch, c, r.max_cells, cfg.grid, (size, size), gen,
                                               r.noise, r.offset, r.mix)
        losses.append(optimize(decoder, opt, sched, ifseg_loss(decoder, feats, text, target)))
        if on_step is not None:
            on_step(step, losses[-1])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    decoder.eval()
    metrics: dict = {  # steps=0 (no loss): the untrained decoder, i.e. the MaskCLIP baseline
        "first_loss": float(np.mean(losses[:20])) if losses else None,
        "final_loss": float(np.mean(losses[-50:])) if losses else None, "train_seconds": round(time.time() - t0, 1)}
    if r.eval_n:
        from .data.toyworld import EVAL_SPLITS

        for name, (split, labels) in EVAL_SPLITS.items():
            for tag, knn in (("", None), ("_knn", KNN_DEFAULTS)):
                metrics[f"torch_miou_{name}{tag}"] = round(evaluate_torch(decoder, clip_model, split, labels,
                                                                          r.eval_n, knn=knn, size=size), 4)
    save_checkpoint(out, decoder.state_dict(), {
        "kind": "ifseg", "architecture": cfg.to_dict(),
        "clip": frozen_clip_ref(clip, template=TEMPLATE),
        "preprocessing": clip_preprocessing(cfg.clip, clip_model),
        "tokenizer": {"type": "clip-bpe", "context_length": ctx},
        "knn": dict(KNN_DEFAULTS),
        "vocabulary": words,
        "recipe": {**r.__dict__, "data": "artificial grids of the vocabulary's text embeddings (no image)"},
        "metrics": metrics}, dtype=torch.float16)
    return metrics


def torch_reference(checkpoint: str | Path, labels: list[str], knn: dict | None = KNN_DEFAULTS):
    """PyTorch counterpart of the runtime predictor (``--compare-torch``): uint8 HxWx3 image at the model's
    input size -> HxW int32 label map, with the kNN refinement (the runtime default) unless ``knn`` is None."""
    decoder, clip, cfg = load_ifseg(checkpoint)
    prep = cfg["preprocessing"]
    text = text_embeddings(clip, labels, cfg["tokenizer"]["context_length"], cfg["clip"]["template"])

    def run(image: np.ndarray) -> np.ndarray:
        feats = dense_features(clip, image[None], prep["mean"], prep["std"])
        return predict_torch(decoder, feats, text, image.shape[:2], knn)[0].numpy().astype(np.int32)

    return run
