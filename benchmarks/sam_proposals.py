"""SAM automatic-mask proposals at full size on ONNX Runtime CPU: before vs after moving the per-mask work into
the engine (issue 15 section 3), in one process.

* before: the decoder graph bundles held until now (``SamDecoderReference``: the embedding expanded to every
  prompt, NCHW ConvTransposes) + the per-mask work in numpy (``generate_masks`` without ``run_masks``);
* after: today's ``sam_decoder`` graph (``SamDecoderWrapper``) + the ``sam_masks`` engine, host NMS/top-k.

Both run the same grid (``--points-per-side`` 32; prompts a call: 64 on the old path as it ran, the new path's
default ``AMG_FULL["batch"]``, or ``--batch B`` on both) on one random ViT-B/H image
embedding (1 x 256 x 64 x 64; the proposal stage does not depend on the encoder) with the random-weight SAM's
decoder, the released settings (``AMG_FULL``) or, with ``--relaxed``, every mask kept by the IoU and
stability filters (the per-mask work at its largest). Runs alternate (before, after, before, ...) so machine
load hits both alike; the figures are the medians.

    .venv/bin/python benchmarks/sam_proposals.py --repeats 1 --out benchmarks/results/sam-proposals-cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def export(wrapper, spec, module, path: Path, outputs: tuple[str, ...] | None = None) -> None:
    import torch

    args = module.example_inputs(spec, "opt", batch=2)
    axes = {k: v for k, v in spec.dynamic_axes().items() if outputs is None or k in [t.name for t in spec.inputs]}
    if outputs:
        axes.update({name: {0: "prompts"} for name in outputs})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=[t.name for t in spec.inputs],
                          output_names=list(outputs or spec.output_names), dynamic_axes=axes,
                          opset_version=spec.opset, dynamo=False)


def runner(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sam", default="vit_b", help="SAM architecture with random weights (vit_b, vit_h)")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--batch", type=int, default=None, help="prompts per decoder call on both paths (equal batches)")
    p.add_argument("--before-batch", type=int, default=None,
                   help="prompts per call on the old path (default 64, what it ran with)")
    p.add_argument("--after-batch", type=int, default=None,
                   help="prompts per call on the new path (default AMG_FULL's batch, what bundles run with now)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="original image size")
    p.add_argument("--repeats", type=int, default=1, help="before/after pairs (medians reported)")
    p.add_argument("--relaxed", action="store_true", help="keep every mask (IoU / stability thresholds off)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--workdir", default=None, help="where the ONNX graphs go (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/sam-proposals-cpu.json")
    a = p.parse_args(argv)

    import torch

    from edgeseg.export import sam_decoder, sam_masks
    from edgeseg.export.refdiff_sam import AMG_FULL, sam_components
    from edgeseg.runtime.refdiff_proposals import StderrProgress
    from edgeseg.runtime.sam_auto import generate_masks, preprocess_shape

    batch = {"before": a.before_batch or a.batch or 64, "after": a.after_batch or a.batch or int(AMG_FULL["batch"])}
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="sam-proposals-"))
    work.mkdir(parents=True, exist_ok=True)
    comps, info = sam_components(a.sam, max_prompts=max(64, *batch.values()))
    new_w, dec_spec = comps[sam_decoder.NAME]
    masks_w, masks_spec = comps[sam_masks.NAME]
    old_w = sam_decoder.SamDecoderReference(new_w).eval()  # same SAM modules, the previous graph
    t0 = time.perf_counter()
    export(old_w, dec_spec, sam_decoder, work / "sam_decoder_before.onnx", sam_decoder.OUTPUTS_BEFORE)
    export(new_w, dec_spec, sam_decoder, work / "sam_decoder.onnx")
    export(masks_w, masks_spec, sam_masks, work / "sam_masks.onnx")
    print(f"exported 3 graphs to {work} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    max_prompts = int(masks_spec.input("image_tokens").max[0])
    del comps, new_w, old_w, masks_w  # the torch model is not part of the stage
    gc.collect()

    amg = dict(AMG_FULL, points_per_side=a.points_per_side, top_k=10)
    if a.relaxed:
        amg.update(pred_iou_thresh=-1e9, stability_score_thresh=0.0, min_mask_area=0)
    amg_before, amg_after = dict(amg, batch=batch["before"]), dict(amg, batch=batch["after"])
    size = int(info["sam_preprocessing"]["img_size"])
    hw = (int(a.size[0]), int(a.size[1]))
    input_hw = preprocess_shape(*hw, size)
    emb = np.random.default_rng(0).normal(size=tuple(dec_spec.inputs[0].shape)).astype(np.float32)

    def before():  # sessions are opened per run (not timed) so one path's arena does not sit under the other
        run_old = runner(work / "sam_decoder_before.onnx", a.threads)
        return lambda: generate_masks(run_old, emb, hw, input_hw, amg_before, size, progress=StderrProgress("before"))

    def after():
        run_new = runner(work / "sam_decoder.onnx", a.threads)
        run_masks = runner(work / "sam_masks.onnx", a.threads)
        return lambda: generate_masks(run_new, emb, hw, input_hw, amg_after, size, run_masks=run_masks,
                                      max_prompts=max_prompts, progress=StderrProgress("after"))

    times: dict[str, list[float]] = {"before": [], "after": []}
    results = {}
    for r in range(a.repeats):
        for name, opener in (("before", before), ("after", after)):
            fn = opener()
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
            del fn
            gc.collect()
            print(f"[{r + 1}/{a.repeats}] {name}: {times[name][-1]:.1f} s, {len(results[name][0])} masks",
                  file=sys.stderr, flush=True)
    mb, ma = results["before"][0], results["after"][0]
    ious = [float((x & y).sum() / max((x | y).sum(), 1)) for x, y in zip(mb, ma)]
    med = {k: statistics.median(v) for k, v in times.items()}
    n_batches = {k: -(-a.points_per_side ** 2 // b) for k, b in batch.items()}
    out = {
        "command": "python benchmarks/sam_proposals.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "SAM automatic-mask proposal stage (decoder over the point grid + per-mask work + NMS/top-k), "
                "ONNX Runtime CPU, random-weight decoder, random 1x256x64x64 image embedding",
        "sam": a.sam, "points_per_side": a.points_per_side, "batch": batch, "point_batches": n_batches,
        "image_hw": list(hw), "input_hw": list(input_hw), "relaxed_thresholds": a.relaxed,
        "amg": {k: amg[k] for k in ("pred_iou_thresh", "stability_score_thresh", "stability_offset",
                                    "box_nms_thresh", "min_mask_area", "top_k")},
        "threads": a.threads or os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": list(os.getloadavg()),
        "before_s": round(med["before"], 2), "after_s": round(med["after"], 2),
        "before_runs_s": [round(t, 2) for t in times["before"]], "after_runs_s": [round(t, 2) for t in times["after"]],
        "speedup": round(med["before"] / med["after"], 2),
        "masks": {"before": len(mb), "after": len(ma), "min_iou": min(ious) if ious else None},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
