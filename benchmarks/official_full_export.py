"""Full-size export and build check of the official architectures with random weights (out of CI: minutes and
several GB each): lang-seg's LSeg ``lseg_vitl16_384`` (and ``lseg_vitb32_384``), TCL's ``tcl_vitb16``.

    python benchmarks/official_full_export.py [--only lseg_vitl16_384 tcl_vitb16] [--stages export runtime build
        bench] [--workdir /tmp/official] [--out benchmarks/results/official-full-export.json]

Per config, each stage in its own process (so its peak RSS is its own):
- export: ``edgeseg export`` of the random-weight model (seeded), ``verify`` (every component vs PyTorch at
  batch 1), TensorRT lint of the FP32 graphs (trt10.3, trt11);
- runtime: ``segment`` of a real photo (scikit-image's coffee, 400 x 600) with the official sliding windows,
  against the PyTorch reference of the official evaluation (edgeseg.export.official_references);
- build: FP16, INT8 (Q/DQ, calibration on 2 ToyWorld images: a smoke test of the build, not a fidelity figure)
  and int8dyn, lint errors, ONNX Runtime CPU latency of the encoder per precision (:data:`PRECISIONS`);
- bench: ``edgeseg bench components <encoder>/<config>`` (PyTorch eager vs ONNX Runtime CPU FP32); for
  ViT-L/16 (whose bench process, holding the model twice and the ORT session, passes 11 GB) ``latency``
  times the same two one after the other in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {"lseg_vitl16_384": ("lseg", "lseg_encoder"), "lseg_vitb32_384": ("lseg", "lseg_encoder"),
           "tcl_vitb16": ("tcl", "tcl_encoder"),
           # the CI-sized twins, to smoke-test this script in seconds
           "lseg_tiny_official": ("lseg", "lseg_encoder"), "tcl_tiny_official": ("tcl", "tcl_encoder")}
# Builds per config. Q/DQ INT8 of ViT-L/16 at 480 px is left out here: ONNX Runtime's calibrator keeps every
# intermediate tensor of the calibration images in memory (~8 GB per image for this graph), more than this
# shared 24 GB machine allows; int8dyn needs no calibration.
PRECISIONS = {"lseg_vitl16_384": "fp32,fp16,int8dyn"}
DEFAULT_PRECISIONS = "fp32,fp16,int8,int8dyn"

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
stage, name, method, encoder, work, precisions = sys.argv[1:7]
work = Path(work)
fp32 = work / f"{method}_{name}"
row = {"config": name, "stage": stage}
t0 = time.perf_counter()
if stage == "export":
    from edgeseg.export.bundle import export_bundle
    from edgeseg.export.verify import verify_bundle
    from edgeseg.export.build.lint import lint_bundle
    export_bundle(method, name, fp32, progress=False)
    row["export_s"] = round(time.perf_counter() - t0, 1)
    row["onnx_MB"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(fp32.iterdir()) if p.suffix == ".onnx"}
    row["files_MB"] = round(sum(p.stat().st_size for p in fp32.iterdir()) / 2**20, 1)
    t1 = time.perf_counter()
    row["parity"] = [{"component": r.component, "output": r.output, "shape": list(r.shape), "max_abs": r.max_abs,
                      "cosine": r.cosine} for r in verify_bundle(fp32, batches=(1,))]
    row["verify_s"] = round(time.perf_counter() - t1, 1)
    row["lint_errors"] = {t: {c: sum(i.level == "error" for i in issues) for c, issues in lint_bundle(fp32, t).items()}
                          for t in ("trt10.3", "trt11")}
elif stage == "runtime":
    import torch, open_clip
    import skimage.data
    from edgeseg.runtime import load_predictor
    from edgeseg.runtime.images import load_image
    labels = ["cup", "saucer", "table", "coffee", "spoon", "wall"]
    photo = load_image(skimage.data.coffee())
    pred = load_predictor(fp32, cache_dir=None)
    t1 = time.perf_counter(); res = pred.segment(photo, labels, full_probabilities=True); t2 = time.perf_counter()
    row["runtime_s"] = round(t2 - t1, 1)
    row["timings_ms"] = {k: round(v) for k, v in res.timings_ms.items()}
    row["tiling"] = pred._local.state.tiling.describe()
    del pred
    from edgeseg.export import official_references as ref
    if method == "lseg":
        from edgeseg.train.lseg_official import load_official_lseg
        model = load_official_lseg(name)
        text = model.encode_text(open_clip.tokenize(labels)).detach()
        t3 = time.perf_counter()
        full, _ = ref.lseg_multieval(model, photo, text, model.config.base_size, model.config.crop_size)
        want = torch.softmax(full, 1)[0].numpy()
    else:
        from edgeseg.train.tcl_official import load_official_tcl
        model = load_official_tcl(name)
        text = model.encode_text(open_clip.tokenize([f"a photo of a {x}." for x in labels])).detach()
        t3 = time.perf_counter()
        prep = json.loads((fp32 / "manifest.json").read_text())["preprocessing"]
        full, _ = ref.tcl_slide(model, photo, text, tuple(prep["scale"]), prep["window"][0], prep["stride"][0])
        want = full[0].numpy()
    row["torch_reference_s"] = round(time.perf_counter() - t3, 1)
    row["max_abs_vs_torch"] = float(np.abs(res.probabilities - want).max())
    row["label_agreement_vs_torch"] = float(np.mean(res.label_map == want.argmax(0)))
elif stage == "build":
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.export.build.lint import lint_bundle
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.images import preprocess
    import skimage.data
    from edgeseg.runtime.images import load_image
    row["builds"] = {}
    for precision in precisions.split(","):
        t1 = time.perf_counter()
        out = fp32 if precision == "fp32" else build_bundle(fp32, precision, calib_n=2, progress=False)
        build_s = round(time.perf_counter() - t1, 1)
        b = Bundle(out)
        x = preprocess(load_image(skimage.data.coffee()), b.preprocessing)
        b.session(encoder)
        b.run(encoder, {"image": x})
        times = []
        for _ in range(2):
            t = time.perf_counter(); b.run(encoder, {"image": x}); times.append((time.perf_counter() - t) * 1e3)
        row["builds"][precision] = {
            "build_s": build_s, "encoder_ms": round(min(times)),
            "lint_errors": {t: sum(sum(i.level == "error" for i in issues) for issues in lint_bundle(out, t).values())
                            for t in ("trt10.3", "trt11")},
            "peak_rss_GB_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
        del b
elif stage == "bench":
    from edgeseg.export.bench.components import bench_components
    doc = bench_components([f"{encoder}/{name}"], ["torch-cpu-fp32", "ort-cpu-fp32"], iters=3,
                           warmup=1, threads=2, memory=False, workdir=work, progress=False)
    row["bench"] = [{"backend": r["backend"], "p50_ms": (r.get("latency_ms") or {}).get("p50_ms"),
                     "cosine_vs_torch_fp32": (r.get("fidelity") or {}).get("cosine_vs_torch_fp32"),
                     "skipped": r.get("skipped")} for r in doc["rows"]]
elif stage == "latency":  # PyTorch eager vs ONNX Runtime CPU, one after the other (lower peak than bench)
    import gc, torch
    from edgeseg.export.bundle import build_components, example_inputs
    from edgeseg.runtime.bundle import Bundle
    torch.set_num_threads(2)
    comps, _ = build_components(method, name)
    wrapper, cspec = comps[encoder]
    del comps
    x = example_inputs(encoder, cspec, "opt", batch=1, seed=1)
    with torch.no_grad():
        wrapper(*x)
        times = []
        for _ in range(2):
            t = time.perf_counter(); ref = wrapper(*x); times.append((time.perf_counter() - t) * 1e3)
    row["torch_cpu_fp32_ms"] = round(min(times))
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    del wrapper
    gc.collect()
    b = Bundle(fp32, threads=2)
    feeds = {t.name: v.numpy() for t, v in zip(cspec.inputs, x)}
    b.run(encoder, feeds)
    times = []
    for _ in range(2):
        t = time.perf_counter(); got = b.run(encoder, feeds); times.append((time.perf_counter() - t) * 1e3)
    row["ort_cpu_fp32_ms"] = round(min(times))
    row["max_abs_vs_torch"] = {k: float(np.abs(g - r).max()) for (k, g), r in zip(got.items(), ref)}
    row["input_shapes"] = {k: list(v.shape) for k, v in feeds.items()}
row["stage_s"] = round(time.perf_counter() - t0, 1)
row["peak_rss_GB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
print("ROW " + json.dumps(row))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=["lseg_vitl16_384", "tcl_vitb16", "lseg_vitb32_384"])
    ap.add_argument("--stages", nargs="*", default=["export", "runtime", "build", "bench"],
                    choices=["export", "runtime", "build", "bench", "latency"])
    ap.add_argument("--workdir", default="/tmp/edgeseg-official-full")
    ap.add_argument("--out", default="benchmarks/results/official-full-export.json")
    a = ap.parse_args()
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    doc.update({"machine": {"platform": platform.platform(), "python": platform.python_version()},
                "note": "random weights (seeded); one process per stage; 2 CPU threads; the machine shared with "
                        "other jobs, so times are rough"})
    for name in a.only:
        method, encoder = CONFIGS[name]
        for stage in a.stages:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", WORKER, stage, name, method, encoder, a.workdir,
                                PRECISIONS.get(name, DEFAULT_PRECISIONS)], capture_output=True, text=True)
            rows = [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")]
            err = [x for x in p.stderr.strip().splitlines() if not x.startswith("WARNING")][-4:]
            row = rows[0] if rows else {"config": name, "stage": stage, "returncode": p.returncode, "error": err}
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)
            doc["rows"] = [r for r in doc["rows"] if (r.get("config"), r.get("stage")) != (name, stage)] + [row]
            out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
