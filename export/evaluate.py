"""``edgeseg eval lseg``: ToyWorld mIoU through the runtime (no torch needed unless compared with PyTorch).

Splits and label sets:
- ``seen``: scenes with seen shapes; labels = seen shapes + stuff (the training label set).
- ``unseen``: scenes with hexagons and hearts only; pure zero-shot labels = unseen shapes + stuff.
- ``generalized``: scenes with every shape; labels = all 8 shapes + stuff.
Ground-truth pixels whose class is not in the label set are ignored (value 255); mIoU is over the classes
present in the ground truth of the whole evaluated set, from one accumulated confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeseg.runtime.lseg import LSegPredictor
from edgeseg.runtime.metrics import ConfusionMatrix
from edgeseg.train.data.toyworld import (SEEN_SHAPES, SHAPES, STUFF, UNSEEN_SHAPES, ToyWorld, ToyWorldConfig,
                                         label_lut)

EVAL_SPLITS = {  # name -> (ToyWorld split, label set)
    "seen": ("seen", list(SEEN_SHAPES) + list(STUFF)),
    "unseen": ("unseen", list(UNSEEN_SHAPES) + list(STUFF)),
    "generalized": ("all", list(SHAPES) + list(STUFF)),
}


@dataclass
class EvalResult:
    split: str
    n: int
    seed: int
    labels: list[str]
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float]
    timings_ms: dict[str, float] = field(default_factory=dict)  # median per stage
    torch_agreement: float | None = None  # fraction of pixels where runtime and PyTorch label maps agree

    def summary(self) -> str:
        s = f"{self.split:<12} n={self.n:<4} mIoU={self.miou:.4f}  pixel-acc={self.pixel_accuracy:.4f}"
        if self.torch_agreement is not None:
            s += f"  runtime-vs-torch agreement={self.torch_agreement:.5f}"
        return s


def eval_lseg(bundle: str | Path, split: str = "seen", n: int = 200, seed: int = 0, cache_dir="default",
              compare_torch: str | Path | None = None, progress: bool = True) -> EvalResult:
    """mIoU of a bundle on ``n`` ToyWorld scenes; ``compare_torch`` (an LSeg checkpoint) adds the
    runtime-vs-PyTorch label-map agreement on the same scenes."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown eval split {split!r}; choose one of {sorted(EVAL_SPLITS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    world_split, labels = EVAL_SPLITS[split]
    pred = LSegPredictor(bundle, cache_dir=cache_dir)
    size = pred.bundle.preprocessing["image_size"][0]
    world = ToyWorld(world_split, seed, ToyWorldConfig(size=size))
    lut, cm = label_lut(labels), ConfusionMatrix(len(labels))
    torch_fn = _torch_predictor(compare_torch, labels) if compare_torch else None
    agree, total, times = 0, 0, []
    for i in tqdm(range(n), desc=f"eval lseg {split}", disable=not progress):
        scene = world[i]
        res = pred.segment(scene.image, labels)
        cm.update(lut[scene.semantic], res.label_map)
        times.append(res.timings_ms)
        if torch_fn is not None:
            ref = torch_fn(scene.image)
            agree += int((ref == res.label_map).sum())
            total += ref.size
    iou = cm.iou()
    return EvalResult(split, n, seed, labels, cm.miou(), cm.pixel_accuracy(),
                      {l: float(v) for l, v in zip(labels, iou) if np.isfinite(v)},
                      {k: float(np.median([t[k] for t in times])) for k in times[0]},
                      agree / total if total else None)


def _torch_predictor(checkpoint: str | Path, labels: list[str]):
    """PyTorch reference: the same preprocessing, argmax of the model's logits at the input size."""
    import torch

    from edgeseg.train.train_clip import images_to_tensor
    from edgeseg.train.train_lseg import load_lseg, text_embeddings

    model, clip, cfg = load_lseg(checkpoint)
    prep = cfg["preprocessing"]
    text = text_embeddings(clip, labels, cfg["tokenizer"]["context_length"], cfg["text_encoder"]["template"])

    @torch.no_grad()
    def run(image: np.ndarray) -> np.ndarray:
        logits = model(images_to_tensor(image[None], prep["mean"], prep["std"]), text)
        return logits.argmax(1)[0].numpy().astype(np.int32)

    return run
