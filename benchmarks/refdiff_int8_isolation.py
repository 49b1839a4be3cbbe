"""Which Ref-Diff component costs the INT8 build its task fidelity? A per-component isolation study.

    python benchmarks/refdiff_int8_isolation.py --fp32 engines/refdiff_toy --int8 engines/refdiff_toy_int8 \
        --n 40 --seed 1 --out benchmarks/results/refdiff-int8-isolation.json

For every variant the FP32 bundle runs with some components' sessions taken from the INT8 build (same
manifest I/O, so the runtime cannot tell): "all int8", "int8 except X" (X back to FP32) and "only X int8" for
each component X. Per variant: the mean IoU of the chosen mask against the FP32 bundle's, the share of
identical masks (IoU >= 0.999) and the oIoU against the ground truth, on ToyWorld referring samples (the
parser-free rule, as ``edgeseg verify``). Use a validation seed here (1 by default) and report the final
build on seed 0 with ``edgeseg verify``: the choice of what to keep in FP32 is tuned on this study.

Exclusion variants of one component (``--requantize X --variant LABEL=REGEX[,REGEX...] ...``): the FP32
pipeline is recorded on the calibration images as ``edgeseg build`` does (same spool, same Percentile
calibration), X is quantized once per variant with its spec's ``int8_exclude`` plus the variant's node-name
regexes (``none``: nothing more, the build's own X), and each variant is scored by its per-output cosine
against FP32 on ``edgeseg verify``'s example inputs (batches 1 and 3), as "only X int8" and, with ``--int8``, as
the INT8 build with its X replaced::

    python benchmarks/refdiff_int8_isolation.py --fp32 engines/refdiff_toy --int8 engines/refdiff_toy_int8 \
        --requantize sam_encoder --variant none neck=neck last=blocks\\.3/ --seed 1
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
    ap.add_argument("--int8", default=None, help="its INT8 build (edgeseg build FP32 --precision int8); "
                    "required unless --requantize")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1, help="ToyWorld refer seed (a validation seed)")
    ap.add_argument("--only", nargs="*", default=None, help="components to study (default: every one)")
    ap.add_argument("--requantize", default=None, metavar="X", help="study exclusion variants of component X")
    ap.add_argument("--variant", nargs="+", default=["none"], metavar="LABEL=REGEX[,REGEX]",
                    help="with --requantize: node-name regexes kept FP32 per variant ('none': the spec's own)")
    ap.add_argument("--calib-n", type=int, default=64, help="with --requantize: calibration images (as build)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    if args.requantize:
        return requantize_study(args)
    if not args.int8:
        raise SystemExit("--int8 BUNDLE is required (the INT8 build to take sessions from)")

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


def _output_cosines(fp32, name: str, session, batches: tuple[int, ...] = (1, 3)) -> dict[str, float]:
    """Per output cosine of ``session`` against the FP32 bundle's on the example inputs ``edgeseg verify`` uses
    (seed = batch, batches clamped to the profile)."""
    from edgeseg.export.bundle import example_inputs
    from edgeseg.export.verify import compare, parity_batches

    spec = fp32.spec(name)
    out = {}
    for b in parity_batches(spec, batches):
        feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, example_inputs(name, spec, "opt", batch=b, seed=b))}
        want, got = fp32.run(name, feeds), session.run(feeds)
        out.update({f"{k}@{b}": round(compare(want[k], got[k])[1], 5) for k in want})
    return out


def _parse_variants(items: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        label, _, regexes = item.partition("=")
        if label != "none" and not regexes:
            raise SystemExit(f"--variant {item!r}: write LABEL=REGEX[,REGEX...] (or 'none')")
        out[label] = tuple(r for r in regexes.split(",") if r)
    return out


def requantize_study(args) -> int:
    """Quantize ``args.requantize`` under each exclusion variant (calibrated as ``edgeseg build`` does) and
    score "only X int8" (and "int8 build, X variant" with ``--int8``) against the FP32 bundle."""
    import shutil
    import tempfile

    from edgeseg.export.build.builder import _int8_component
    from edgeseg.export.build.calib_pipeline import drop_spool, pipeline_spool
    from edgeseg.export.build.quantize import calibration_set
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.fileio import atomic_write_bytes
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.runtime.session import open_session
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    name, variants = args.requantize, _parse_variants(args.variant)
    fp32 = Bundle(args.fp32)
    if name not in fp32.components:
        raise SystemExit(f"{args.fp32} has no component {name!r}; it has {sorted(fp32.components)}")
    own = tuple(fp32.component(name).get("precision_hints", {}).get("int8_exclude", []))
    src = fp32.file(fp32.entry(name).file)
    calib = calibration_set(args.calib_n, size=fp32.manifest["preprocessing"]["image_size"][0])
    spool, _ = pipeline_spool("refdiff", args.fp32, calib, cap=4 * args.calib_n)
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-requant-"))
    sessions, facts = {}, {}
    try:
        for label, extra in variants.items():
            t = time.perf_counter()
            dst = tmp / f"{name}-{label}.onnx"
            done = _int8_component(name, fp32.component(name), fp32.manifest, fp32, src, dst, None, spool,
                                   own + extra, external=False, progress=False)  # the build's own path
            sessions[label] = open_session("ort-cpu", dst, fp32.entry(name))
            facts[label] = {"exclude": list(own + extra), "quantized_nodes": done["quantized_nodes"],
                            "excluded_nodes": len(done["excluded_nodes"]),
                            "calibration_samples": done.get("calibration_samples"),
                            "quantize_s": round(time.perf_counter() - t, 1),
                            "cosine": _output_cosines(fp32, name, sessions[label])}
            print(f"quantized {name} [{label}]: {facts[label]['quantized_nodes']} nodes INT8, "
                  f"{facts[label]['excluded_nodes']} kept FP32; cosine vs FP32 {facts[label]['cosine']}",
                  file=sys.stderr, flush=True)
    finally:
        drop_spool(spool)
        shutil.rmtree(tmp, ignore_errors=True)  # the sessions hold their graphs
    int8 = Bundle(args.int8) if args.int8 else None
    others = [n for n in fp32.components if n != name] if int8 else []

    def predictor(label: str, with_build: bool) -> RefDiffPredictor:
        b = Bundle(args.fp32)
        for n in (others if with_build else []):
            b._sessions[n] = int8.session(n)
        b._sessions[name] = sessions[label]
        return RefDiffPredictor(b, cache_dir=None, parser=None)

    base = RefDiffPredictor(Bundle(args.fp32), cache_dir=None, parser=None)
    world = ReferWorld(args.seed, ToyWorldConfig(size=base.config["vae_preprocessing"]["image_size"][0]))
    samples = [world[i] for i in range(args.n)]
    ref = _masks(base, samples)
    rows = {}
    for label in variants:
        for with_build in ([False, True] if int8 else [False]):
            key = f"{'int8 build' if with_build else 'only'} {name} [{label}]"
            rows[key] = dict(_score(_masks(predictor(label, with_build), samples), ref, samples), **facts[label])
            r = rows[key]
            print(f"{key:40s} IoU {r['iou_mean']:.4f} same {r['same_choice']:.2f} min {r['min_iou']:.3f} "
                  f"oIoU {r['oiou']:.4f}", file=sys.stderr, flush=True)
    result = {"fp32": str(args.fp32), "int8": args.int8, "requantize": name, "calib_n": args.calib_n, "n": args.n,
              "seed": args.seed, "oiou_fp32": _score(ref, ref, samples)["oiou"], "variants": rows}
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        atomic_write_bytes(Path(args.out), text.encode())
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
