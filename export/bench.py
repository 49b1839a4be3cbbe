"""``edgeseg bench encoders``: PyTorch eager vs ONNX Runtime CPU latency of image encoders, in one run.

Each case is exported to a temporary ONNX file, then PyTorch and ORT are timed in alternating rounds on the
same input (warm-up first) so that machine noise hits both alike. Results (p50/p90/mean with a 95% CI,
ratio of medians, machine, versions, the exact command) are written as JSON under ``benchmarks/results/``.
Ratios are the figures to compare; absolute CPU times depend on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeseg.runtime.fileio import atomic_write_bytes

from .bundle import _versions, build_components, export_component

CASES = {  # name -> (method, checkpoint, component)
    "lseg_encoder/toy-tiny": ("lseg", "lseg_toy", "lseg_encoder"),
    "clip_image/toy-tiny": ("clip", "clip_toy", "clip_image"),
    "clip_image/ViT-B-16": ("clip", "ViT-B-16", "clip_image"),
}


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return {"p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "mean_ci95_ms": [float(a.mean() - half), float(a.mean() + half)], "n": int(len(a))}


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def bench_case(name: str, batch: int = 1, iters: int = 20, warmup: int = 3, threads: int = 2) -> dict:
    import onnxruntime as ort

    method, ckpt, comp = CASES[name]
    comps, _ = build_components(method, ckpt)
    wrapper, spec = comps[comp]
    shape = list(spec.inputs[0].opt)
    shape[0] = batch
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{comp}.onnx"
        t0 = time.perf_counter()
        export_component(wrapper, spec, path)
        export_s = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {spec.inputs[0].name: x.numpy()}
        torch_ms, ort_ms = [], []
        with torch.inference_mode():
            for i in range(warmup + iters):
                t = time.perf_counter()
                wrapper(x)
                t_torch = (time.perf_counter() - t) * 1e3
                t = time.perf_counter()
                sess.run(None, feed)
                t_ort = (time.perf_counter() - t) * 1e3
                if i >= warmup:
                    torch_ms.append(t_torch)
                    ort_ms.append(t_ort)
    pt, ox = _stats(torch_ms), _stats(ort_ms)
    return {"case": name, "batch": batch, "input_shape": shape, "threads": threads, "export_seconds": round(export_s, 2),
            "pytorch_eager_fp32": pt, "ort_cpu_fp32": ox, "speedup_ort_vs_torch_p50": pt["p50_ms"] / ox["p50_ms"]}


def bench_encoders(cases: list[str] | None = None, iters: int = 20, batch: int = 1, threads: int = 2,
                   out: str | Path = "benchmarks/results/encoders-cpu.json") -> dict:
    cases = cases or list(CASES)
    bad = [c for c in cases if c not in CASES]
    if bad:
        raise ValueError(f"unknown bench case(s) {bad}; choose from {list(CASES)}")
    from tqdm import tqdm

    results = [bench_case(c, batch, iters, threads=threads) for c in tqdm(cases, desc="bench encoders")]
    doc = {"benchmark": "encoders", "command": "edgeseg " + " ".join(sys.argv[1:]) if sys.argv else "",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": _machine(),
           "versions": _versions(), "results": results}
    atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
    return doc


def format_results(doc: dict) -> str:
    lines = ["| case | batch | PyTorch eager p50 ms | ORT CPU p50 ms | ORT / PyTorch speed-up |", "|---|---|---|---|---|"]
    for r in doc["results"]:
        lines.append(f"| {r['case']} | {r['batch']} | {r['pytorch_eager_fp32']['p50_ms']:.1f} | "
                     f"{r['ort_cpu_fp32']['p50_ms']:.1f} | {r['speedup_ort_vs_torch_p50']:.2f}x |")
    return "\n".join(lines)
