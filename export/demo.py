"""``edgeseg demo``: bundled ToyWorld checkpoint -> bundle under engines/ -> overlays and a short report.

Reuses the bundle when its manifest names the same checkpoint hash, so a second run skips the export.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgeseg.runtime.fileio import atomic_write_bytes
from edgeseg.train.checkpoint import resolve_checkpoint, sha256_file

DEFAULT_CHECKPOINT = "lseg_toy"


def ensure_bundle(checkpoint: str | Path, out: Path, method: str = "lseg") -> tuple[Path, bool]:
    """(bundle path, exported now?) -- export only when missing, unloadable or from another checkpoint."""
    from edgeseg.runtime.bundle import Bundle

    from edgeseg.export.bundle import export_bundle

    want = sha256_file(resolve_checkpoint(checkpoint) / "model.safetensors")
    try:
        if Bundle(out).manifest["source"]["weights_sha256"] == want:
            return out, False
    except (FileNotFoundError, ValueError, KeyError):
        pass
    return export_bundle(method, checkpoint, out), True


def run_demo(out: str | Path = "out/demo", bundle: str | Path = "engines/lseg_toy", checkpoint: str = DEFAULT_CHECKPOINT,
             n_eval: int = 50, seed: int = 7, refdiff_bundle: str | Path | None = "engines/refdiff_toy") -> dict:
    """Write overlays for seen- and unseen-label scenes plus report.json/report.md under ``out``; with
    ``refdiff_bundle``, also the LSeg INT8 build's mIoU and the Ref-Diff FP32 vs INT8 section
    (:mod:`.demo_refdiff`)."""
    from edgeseg.runtime.lseg import LSegPredictor
    from edgeseg.runtime.visualize import overlay, save_png
    from edgeseg.train.data.toyworld import ToyWorld

    from edgeseg.export.evaluation.segmentation import eval_lseg
    from edgeseg.train.data.toyworld import EVAL_SPLITS

    t0 = time.time()
    out, bundle = Path(out), Path(bundle)
    bundle, exported = ensure_bundle(checkpoint, bundle)
    t_export = time.time() - t0
    pred = LSegPredictor(bundle)
    shots = []
    for split in ("seen", "unseen"):
        world_split, labels = EVAL_SPLITS[split]
        world = ToyWorld(world_split, seed)
        for i in range(3):
            scene = world[i]
            res = pred.segment(scene.image, labels)
            path = save_png(overlay(scene.image, res.label_map, labels, title=f"{split}: {scene.caption}", scale=3),
                            out / f"{split}_{i}.png")
            shots.append(str(path))
    evals = {s: eval_lseg(bundle, s, n=n_eval, seed=seed, progress=True) for s in ("seen", "unseen", "generalized")}
    int8_miou, refdiff = None, None
    if refdiff_bundle is not None:
        from edgeseg.export.build.builder import build_bundle
        from edgeseg.export.demo_refdiff import run_refdiff_demo

        lseg8 = out / f"{bundle.name}_int8"
        if not (lseg8 / "manifest.json").is_file():
            build_bundle(bundle, "int8", out=lseg8, calib_n=16, progress=True)
        int8_miou = {s: round(eval_lseg(lseg8, s, n=n_eval, seed=seed, progress=True).miou, 4) for s in ("seen",)}
        refdiff = run_refdiff_demo(out, Path(refdiff_bundle))
    report = {
        "bundle": str(bundle), "exported_now": exported, "export_seconds": round(t_export, 1),
        "checkpoint": checkpoint, "overlays": shots,
        "miou": {s: round(e.miou, 4) for s, e in evals.items()}, "n_per_split": n_eval, "seed": seed,
        "median_stage_ms": {k: round(v, 2) for k, v in evals["seen"].timings_ms.items()},
        "provider": "CPUExecutionProvider", "int8_miou": int8_miou, "refdiff": refdiff,
        "total_seconds": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    md = ["# edgeseg demo report", "", f"bundle `{bundle}` (exported now: {exported}), checkpoint `{checkpoint}`", "",
          "| split | labels | mIoU |", "|---|---|---|"]
    md += [f"| {s} | {', '.join(EVAL_SPLITS[s][1])} | {e.miou:.3f} |" for s, e in evals.items()]
    md += ["", "median per-stage latency (ms, ORT CPU): " +
           ", ".join(f"{k} {v:.1f}" for k, v in report["median_stage_ms"].items()), "",
           "overlays: " + ", ".join(Path(s).name for s in shots)]
    if int8_miou:
        md += ["", "LSeg INT8 build (calibrated on 16 ToyWorld scenes): mIoU " +
               ", ".join(f"{s} {v:.3f} (FP32 {evals[s].miou:.3f})" for s, v in int8_miou.items())]
    if refdiff:
        from edgeseg.export.demo_refdiff import NEXT_STEPS, refdiff_markdown

        md += refdiff_markdown(refdiff) + NEXT_STEPS
    md.append("")
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    return report

