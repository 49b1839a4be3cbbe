"""Full-size Ref-Diff export check with random weights: every component of ``full-vit-b`` / ``full-vit-h``
exported to ONNX, loaded in ONNX Runtime (CPU) and compared with PyTorch on one example input.

    python benchmarks/refdiff_full_export.py [--config full-vit-h] [--only unet_attn sam_encoder]
        [--export-only unet_attn] [--out benchmarks/results/refdiff-full-export.json]

Each component runs in its own process, so its peak resident memory (export, then the ORT check) is its own.
Too slow for CI (SD 1.5 UNet: ~3.4 GB of weights); run it by hand on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
side, checkpoint, name, folder = sys.argv[1:5]
t0 = time.perf_counter()
if side == "sd":
    from edgeseg.export.refdiff_sd import sd_components as build
elif side == "sam":
    from edgeseg.export.refdiff_sam import sam_components as build
else:
    from edgeseg.export.clip_masked import refdiff_clip_components as build
comps, info = build(checkpoint, image_size=int(sys.argv[5]) or None) if side == "sd" else build(checkpoint)
if name == "unet_attn":  # as the bundle assembler: attn_logits at latent/4 too (the released preset)
    from edgeseg.export.unet_attn import with_logits
    comps[name], _ = with_logits(*comps[name], info["attention"])
if name == "clip_hard":  # as the bundle assembler: on clip_masked's tower
    from edgeseg.export.clip_hard import refdiff_hard_component
    comps[name], _ = refdiff_hard_component(comps["clip_masked"][0].visual, info["preprocessing"])
wrapper, cspec = comps[name]
for other in [k for k in comps if k != name]:
    del comps[other]
params = sum(p.numel() for p in wrapper.parameters())
t1 = time.perf_counter()
from edgeseg.export.bundle import example_inputs, export_component
path = Path(folder) / f"{name}.onnx"
export_component(wrapper, cspec, path)
t2 = time.perf_counter()
export_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20
if sys.argv[6] == "1":  # export only (--export-only): no PyTorch / ONNX Runtime comparison
    print(json.dumps({"component": name, "model": checkpoint, "parameters_M": round(params / 1e6, 1),
                      "build_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1), "onnx_MB": round(size, 1),
                      "peak_rss_export_GB": round(export_rss / 1024, 2),
                      "input_shapes": {t.name: list(t.opt) for t in cspec.inputs},
                      "ort_check": "skipped (--export-only)"}))
    sys.exit(0)
inputs = example_inputs(name, cspec, "opt", batch=1, seed=1)
with torch.no_grad():
    t3 = time.perf_counter(); ref = wrapper(*inputs); t4 = time.perf_counter()
ref = ref if isinstance(ref, tuple) else (ref,)
import onnxruntime as ort
sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
feeds = {t.name: x.numpy() for t, x in zip(cspec.inputs, inputs)}
t5 = time.perf_counter(); got = sess.run(None, feeds); t6 = time.perf_counter()
diff = {t.name: float(np.abs(r.numpy() - g).max()) for t, r, g in zip(cspec.outputs, ref, got)}
print(json.dumps({"component": name, "model": checkpoint, "parameters_M": round(params / 1e6, 1),
                  "build_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1), "onnx_MB": round(size, 1),
                  "peak_rss_export_GB": round(export_rss / 1024, 2),
                  "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "input_shapes": {t.name: list(x.shape) for t, x in zip(cspec.inputs, inputs)},
                  "torch_ms": round((t4 - t3) * 1e3), "ort_cpu_ms": round((t6 - t5) * 1e3),
                  "max_abs_diff": diff}))
"""

SIDES = {"sd_text": "sd", "vae_encoder": "sd", "unet_attn": "sd", "sam_encoder": "sam", "sam_decoder": "sam",
         "sam_masks": "sam",
         "clip_text": "clip", "clip_masked": "clip", "clip_hard": "clip"}


def main() -> None:
    from edgeseg.export.refdiff_bundle import resolve_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="full-vit-h")
    ap.add_argument("--only", nargs="*", default=list(SIDES))
    ap.add_argument("--out", default="benchmarks/results/refdiff-full-export.json")
    ap.add_argument("--export-only", nargs="*", default=[], metavar="COMPONENT",
                    help="export these without the PyTorch / ONNX Runtime comparison (e.g. unet_attn at 1024 px: "
                         "ONNX Runtime CPU would hold two 8 x 16384 x 16384 float32 self-attention tensors, 17 GB)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="export into DIR and keep the ONNX files (default: a temporary folder per component)")
    a = ap.parse_args()
    cfg = resolve_config(a.config)
    models = {"sd": cfg["ldm"], "sam": cfg["sam"], "clip": cfg["clip"]}
    rows = []
    for name in a.only:
        with (contextlib.nullcontext(a.keep) if a.keep else tempfile.TemporaryDirectory()) as tmp:
            Path(tmp).mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", WORKER, SIDES[name], models[SIDES[name]], name, tmp,
                                  str(cfg["sd_image_size"] or 0), "1" if name in a.export_only else "0"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({"component": name, "error": out.stderr.strip().splitlines()[-1][:300]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            rows[-1]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rows[-1]), flush=True)
    doc = {"command": "python benchmarks/refdiff_full_export.py " + " ".join(sys.argv[1:]), "config": a.config,
           "models": models, "machine": platform.platform(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "weights": "random (seeded)", "rows": rows}
    from edgeseg.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(a.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
