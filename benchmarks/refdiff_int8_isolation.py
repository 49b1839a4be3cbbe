"""Which Ref-Diff component costs the INT8 build its task fidelity? A per-component isolation study.

    python benchmarks/refdiff_int8_isolation.py --fp32 engines/refdiff_toy --int8 engines/refdiff_toy_int8 \
        --n 40 --seed 1 --out benchmarks/results/refdiff-int8-isolation.json

For every variant the FP32 bundle runs with some components' sessions taken from the INT8 build (same
manifest I/O, so the runtime cannot tell): "all int8", "int8 except X" (X back to FP32) and "only X int8" for
each component X. Per variant: the mean IoU of the chosen mask against the FP32 bundle's, the share of
identical masks (IoU >= 0.999) and the oIoU against the ground truth, on ToyWorld referring samples (the
parser-free rule, as ``edgeseg verify``). Use a validation seed here (1 by default) and report the final
build on seed 0 with ``edgeseg verify``: the choice of what to keep in FP32 is tuned on this study.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _masks(pred, samples) -> list[np.ndarray]:
    return [pred.segment(s.scene.image, s.expression.text).mask for s in samples]


def _score(masks: list[np.ndarray], ref: list[np.ndarray], samples) -> dict:
    from edgeseg.runtime.refdiff_scores import ReferMetrics, intersection_union

    ious, metrics = [], ReferMetrics()
    for a, r, s in zip(masks, ref, samples):
        inter, union = intersection_union(a, r)
        ious.append(inter / union if union else 1.0)
        metrics.update(a, s.target_mask)
    return {"iou_mean": float(np.mean(ious)), "same_choice": float(np.mean([v >= 0.999 for v in ious])),
            "min_iou": float(np.min(ious)), "oiou": metrics.to_dict()["oIoU"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True, help="the FP32 Ref-Diff bundle")
    ap.add_argument("--int8", required=True, help="its INT8 build (edgeseg build FP32 --precision int8)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1, help="ToyWorld refer seed (a validation seed)")
    ap.add_argument("--only", nargs="*", default=None, help="components to study (default: every one)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.fileio import atomic_write_bytes
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    int8 = Bundle(args.int8)
    names = args.only or list(Bundle(args.fp32).components)

    def predictor(from_int8: set[str]) -> RefDiffPredictor:
        b = Bundle(args.fp32)
        for name in from_int8:
            b._sessions[name] = int8.session(name)  # same spec: the FP32 manifest validates the INT8 session's I/O
        return RefDiffPredictor(b, cache_dir=None, parser=None)

    base = predictor(set())
    world = ReferWorld(args.seed, ToyWorldConfig(size=base.config["vae_preprocessing"]["image_size"][0]))
    samples = [world[i] for i in range(args.n)]
    ref = _masks(base, samples)
    variants: dict[str, set[str]] = {"all int8": set(names)}
    for x in names:
        variants[f"int8 except {x}"] = set(names) - {x}
        variants[f"only {x} int8"] = {x}
    rows = {}
    for label, comps in variants.items():
        t = time.perf_counter()
        rows[label] = dict(_score(_masks(predictor(comps), samples), ref, samples), int8=sorted(comps),
                           seconds=round(time.perf_counter() - t, 1))
        r = rows[label]
        print(f"{label:32s} IoU {r['iou_mean']:.4f} same {r['same_choice']:.2f} min {r['min_iou']:.3f} "
              f"oIoU {r['oiou']:.4f}", file=sys.stderr, flush=True)
    result = {"fp32": str(args.fp32), "int8": str(args.int8), "n": args.n, "seed": args.seed,
              "oiou_fp32": _score(ref, ref, samples)["oiou"], "variants": rows}
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(result, indent=1) + "\n").encode())
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
