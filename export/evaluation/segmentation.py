"""``edgeseg eval lseg|tcl|ifseg``: ToyWorld mIoU through the runtime (no torch needed unless compared with
PyTorch). Every method runs through its runtime predictor (:mod:`edgeseg.runtime.predictors`).

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

from edgeseg.runtime.predictors import load_predictor
from edgeseg.runtime.metrics import ConfusionMatrix
from edgeseg.train.data.toyworld import EVAL_SPLITS, ToyWorld, ToyWorldConfig, label_lut

from edgeseg.methods import METHODS


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
    method: str = "lseg"
    postprocess: bool = True  # the method's refinement (TCL: PAMR, IFSeg: kNN) was on

    def summary(self) -> str:
        s = (f"{self.method:<6} {self.split:<12} n={self.n:<4} mIoU={self.miou:.4f}  "
             f"pixel-acc={self.pixel_accuracy:.4f}  post-processing={'on' if self.postprocess else 'off'}")
        if self.torch_agreement is not None:
            s += f"  runtime-vs-torch agreement={self.torch_agreement:.5f}"
        return s


def eval_method(method: str | None, bundle: str | Path, split: str = "seen", n: int = 200, seed: int = 0,
                cache_dir="default", compare_torch: str | Path | None = None, progress: bool = True,
                postprocess: bool = True, options: dict | None = None) -> EvalResult:
    """mIoU of a bundle on ``n`` ToyWorld scenes through the runtime predictor of ``method`` (None: the
    bundle's). ``compare_torch`` (a checkpoint of that method, where its registry entry has a PyTorch reference) adds
    the runtime-vs-PyTorch label-map agreement on the same scenes. ``options``: more predictor arguments (TCL:
    ``order``)."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown eval split {split!r}; choose one of {sorted(EVAL_SPLITS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    world_split, labels = EVAL_SPLITS[split]
    pred = load_predictor(bundle, method, cache_dir=cache_dir, postprocess=postprocess, **(options or {}))
    method = pred.bundle.method
    references = sorted(m.name for m in METHODS.values() if m.torch_reference_path)
    if compare_torch and method not in references:
        raise ValueError(f"no PyTorch reference for method {method!r} (have: {references})")
    size = pred.bundle.preprocessing["image_size"][0]
    world = ToyWorld(world_split, seed, ToyWorldConfig(size=size))
    lut, cm = label_lut(labels), ConfusionMatrix(len(labels))
    ref_options = {"order": options["order"]} if options and "order" in options else {}
    torch_fn = METHODS[method].torch_reference()(compare_torch, labels, **ref_options) if compare_torch else None
    agree, total, times = 0, 0, []
    for i in tqdm(range(n), desc=f"eval {method} {split}", disable=not progress):
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
                      agree / total if total else None, method, postprocess)


def eval_lseg(bundle: str | Path, split: str = "seen", n: int = 200, seed: int = 0, cache_dir="default",
              compare_torch: str | Path | None = None, progress: bool = True) -> EvalResult:
    """:func:`eval_method` for an LSeg bundle."""
    return eval_method("lseg", bundle, split, n, seed, cache_dir, compare_torch, progress)
