"""The Ref-Diff part of ``edgeseg demo``: toy bundle -> INT8 build -> FP32 and INT8 side by side.

Exports the toy Ref-Diff bundle (reused when present), builds its INT8 variant into the demo folder
(calibrated from the FP32 pipeline on a few ToyWorld scenes), runs both on ToyWorld referring samples and
writes one overlay per sample (FP32 row above, INT8 row below), the accuracy (oIoU vs ground truth), the
fidelity (chosen-mask IoU INT8 vs FP32) and the median per-stage latency of each.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def ensure_refdiff_bundle(out: Path, config: str = "toy") -> tuple[Path, bool]:
    """(bundle, exported now?): the FP32 Ref-Diff bundle at ``out``, exported when missing or unloadable."""
    from edgeseg.runtime.bundle import Bundle

    try:
        if Bundle(out).manifest.get("method") == "refdiff":
            return out, False
    except (FileNotFoundError, ValueError):
        pass
    from edgeseg.export.bundle import export_bundle

    return export_bundle("refdiff", config, out), True


def run_refdiff_demo(out: Path, bundle: Path, n_eval: int = 12, n_shots: int = 3, calib_n: int = 4,
                     seed: int = 3) -> dict:
    """Write ``refer_<i>.png`` under ``out`` and return the Ref-Diff section of the demo report."""
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.runtime.refdiff_scores import ReferMetrics, intersection_union
    from edgeseg.runtime.visualize import refer_overlay, save_png
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    t0 = time.time()
    bundle, exported = ensure_refdiff_bundle(bundle)
    t_export = time.time() - t0
    int8 = out / f"{bundle.name}_int8"
    from edgeseg.runtime.fileio import sha256_file

    current = (int8 / "manifest.json").is_file() and Bundle(int8).manifest["build"].get(
        "source_manifest_sha256") == sha256_file(bundle / "manifest.json")
    if not current:  # missing, or built from another export: rebuild
        build_bundle(bundle, "int8", out=int8, calib_n=calib_n, progress=True)
    t_build = time.time() - t0 - t_export
    calib_n = Bundle(int8).manifest["build"]["calibration"]["n"]
    preds = {"fp32": RefDiffPredictor(bundle, cache_dir=None, parser=None),
             "int8": RefDiffPredictor(int8, cache_dir=None, parser=None)}
    world = ReferWorld(seed, ToyWorldConfig(size=preds["fp32"].config["vae_preprocessing"]["image_size"][0]))
    metrics = {k: ReferMetrics() for k in preds}
    times: dict[str, list[dict]] = {k: [] for k in preds}
    ious, shots = [], []
    for i in range(n_eval):
        s = world[i]
        res = {k: p.segment(s.scene.image, s.expression.text) for k, p in preds.items()}
        for k, r in res.items():
            metrics[k].update(r.mask, s.target_mask)
            times[k].append(r.timings_ms)
        inter, union = intersection_union(res["fp32"].mask, res["int8"].mask)
        ious.append(inter / union if union else 1.0)
        if i < n_shots:
            rows = [np.asarray(refer_overlay(s.scene.image, res[k], top=1)) for k in ("fp32", "int8")]
            width = max(r.shape[1] for r in rows)
            rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
            from PIL import Image

            shots.append(str(save_png(Image.fromarray(np.concatenate(rows, 0)), out / f"refer_{i}.png")))
    median = {k: {st: round(float(np.median([t.get(st, 0.0) for t in v])), 2) for st in v[0]} for k, v in times.items()}
    return {"bundle": str(bundle), "int8_bundle": str(int8), "exported_now": exported,
            "export_seconds": round(t_export, 1), "build_seconds": round(t_build, 1), "calib_n": calib_n,
            "n": n_eval, "seed": seed, "oiou": {k: m.to_dict()["oIoU"] for k, m in metrics.items()},
            "chosen_mask_iou_int8_vs_fp32": round(float(np.mean(ious)), 4), "median_stage_ms": median,
            "overlays": shots, "seconds": round(time.time() - t0, 1)}


def refdiff_markdown(r: dict) -> list[str]:
    """The report.md lines of the Ref-Diff section."""
    stages = list(r["median_stage_ms"]["fp32"])
    md = ["", "## Ref-Diff referring segmentation (FP32 vs INT8, ONNX Runtime CPU)", "",
          f"bundle `{r['bundle']}` (exported now: {r['exported_now']}), INT8 build `{r['int8_bundle']}` "
          f"(calibrated from the FP32 pipeline on {r['calib_n']} ToyWorld scenes, {r['build_seconds']} s)", "",
          f"accuracy on {r['n']} ToyWorld referring samples: oIoU FP32 {r['oiou']['fp32']:.3f}, INT8 "
          f"{r['oiou']['int8']:.3f}; fidelity: chosen-mask IoU INT8 vs FP32 {r['chosen_mask_iou_int8_vs_fp32']:.3f}",
          "", "| stage (median ms) | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    md += [f"| {k} | " + " | ".join(f"{v[s]:.1f}" for s in stages) + " |" for k, v in r["median_stage_ms"].items()]
    md += ["", "overlays (FP32 above, INT8 below): " + ", ".join(Path(s).name for s in r["overlays"])]
    return md


NEXT_STEPS = [
    "",
    "## Next",
    "- your own weights: `edgeseg export refdiff my.json` (ldm/sam/clip paths; see edgeseg.export.refdiff_bundle)",
    "- on the device: `edgeseg build engines/refdiff_toy --precision int8 --backend trt --calib-images DIR`",
    "- measure: `edgeseg bench pipeline engines/refdiff_toy --k 1 4 16 --workdir /tmp/edgeseg-bench`",
    "- fidelity: `edgeseg verify engines/refdiff_toy --precision int8`",
]
