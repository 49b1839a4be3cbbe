"""``edgeseg eval refdiff``: oIoU / mIoU on the ToyWorld referring split, through the runtime.

One UNet pass and one set of SAM proposals per expression serve every row:
- ``generative``: weight-free threshold proposals (5%..95% of c), best s^G (no SAM, no CLIP);
- ``discriminative``: SAM proposals, best s^D (alpha = 0);
- ``full``: SAM proposals, best alpha s^G + (1 - alpha) s^D;
- ``largest`` / ``random``: the largest / a random SAM proposal (baselines);
- ``oracle``: the SAM proposal with the best IoU against the ground truth (the ceiling of any scoring).
Per-kind oIoU of the full pipeline (colour, shape, twins, twins_colour) shows which distractors it resolves.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeseg.runtime.refdiff import RefDiffPredictor
from edgeseg.runtime.refdiff_scores import ReferMetrics, generative_scores, intersection_union, threshold_proposals
from edgeseg.train.data.refer import REFER_KINDS, ReferWorld
from edgeseg.train.data.toyworld import ToyWorldConfig

MODES = ("generative", "discriminative", "full", "largest", "random", "oracle")


@dataclass
class RefEvalResult:
    n: int
    seed: int
    bundle: str
    rows: dict[str, dict]  # mode -> {"oIoU", "mIoU", "n"}
    full_by_kind: dict[str, dict]
    options: dict
    timings_ms: dict[str, float] = field(default_factory=dict)  # median per stage
    proposals_per_image: float = 0.0
    parser: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"Ref-Diff on ToyWorld refer (n={self.n}, seed={self.seed}, {self.bundle}; parser {self.parser})",
                 f"{'mode':<16} {'oIoU':>7} {'mIoU':>7}"]
        lines += [f"{m:<16} {r['oIoU']:>7.4f} {r['mIoU']:>7.4f}" for m, r in self.rows.items()]
        lines.append("full, by kind: " + ", ".join(f"{k} {v['oIoU']:.3f}" for k, v in self.full_by_kind.items()))
        lines.append(f"SAM proposals per image {self.proposals_per_image:.1f}; median ms: " +
                     ", ".join(f"{k} {v:.1f}" for k, v in self.timings_ms.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter, union = intersection_union(a, b)
    return inter / union if union else 0.0


def eval_refdiff(bundle: str | Path, n: int = 200, seed: int = 0, cache_dir="default", progress: bool = True,
                 **options) -> RefEvalResult:
    """Evaluate a Ref-Diff bundle on ``n`` referring samples (:class:`ReferWorld` with ``seed``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t0 = time.perf_counter()
    pred = RefDiffPredictor(bundle, cache_dir=cache_dir, proposals="sam", **options)
    size = pred.config["vae_preprocessing"]["image_size"][0]
    world = ReferWorld(seed, ToyWorldConfig(size=size))
    rng = np.random.default_rng(seed)
    metrics = {m: ReferMetrics() for m in MODES}
    by_kind = {k: ReferMetrics() for k in REFER_KINDS}
    times, counts, parser = [], [], ""
    for i in tqdm(range(n), desc="eval refdiff", disable=not progress):
        sample = world[i]
        gt = sample.target_mask
        pred.set_image(sample.scene.image)
        res = pred.predict(sample.expression.text)
        parser = res.parsed.parser
        sam = [j for j, s in enumerate(res.sources) if s == "sam"]
        props = res.proposals
        counts.append(len(sam))
        th = threshold_proposals(res.attention)
        gen = th[int(np.argmax(generative_scores(res.attention, th)))] if len(th) else np.zeros_like(gt)
        empty = np.zeros_like(gt)
        areas = props.areas
        picks = {
            "generative": gen,
            "discriminative": props[sam[int(np.argmax(res.scores["discriminative"][sam]))]] if sam else empty,
            "full": res.mask,
            "largest": props[sam[int(np.argmax(areas[sam]))]] if sam else empty,
            "random": props[sam[int(rng.integers(len(sam)))]] if sam else empty,
            "oracle": props[sam[int(np.argmax([_iou(props[j], gt) for j in sam]))]] if sam else empty,
        }
        for m, mask in picks.items():
            metrics[m].update(mask, gt)
        by_kind[sample.kind].update(res.mask, gt)
        times.append(res.timings_ms)
    return RefEvalResult(n, seed, str(bundle), {m: v.to_dict() for m, v in metrics.items()},
                         {k: v.to_dict() for k, v in by_kind.items() if v.ious},
                         dict(pred.options, preset=pred.preset),
                         {k: float(np.median([t[k] for t in times])) for k in times[0]},
                         float(np.mean(counts)), parser, round(time.perf_counter() - t0, 1))
