"""Benchmark harness shared by every ``edgeseg bench`` subcommand: statistics, machine facts, device peaks,
result documents (JSON + markdown + PNG) and ``compare``.

A result document is one JSON file under ``benchmarks/results/``::

    {"benchmark": "components", "command": "edgeseg bench ...", "created": ..., "machine": {...},
     "versions": {...}, "settings": {...}, "rows": [ROW, ...]}

and every ROW has the same keys, so ``compare``, the table and the plot work on any benchmark::

    {"name": "clip_image/ViT-B-16", "backend": "ort-cpu-int8", "batch": 1, "skipped": None | "reason",
     "latency_ms": {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "mean_ci95_ms", "n"},
     "stages_ms": {stage: p50 ms}, "throughput_per_s": float, "memory": {"peak_rss_mb", ...},
     "flops": {"gflops", ...}, "fraction_of_peak": float | None, "fidelity": {"cosine_vs_torch_fp32": ...},
     "extra": {...}}

Absolute times depend on the machine; ratios measured in one run are the figures to compare.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeseg.runtime.fileio import atomic_write_bytes

RESULTS_DIR = Path("benchmarks/results")
ROW_KEYS = ("name", "backend", "batch", "skipped", "latency_ms", "stages_ms", "throughput_per_s", "memory",
            "flops", "fraction_of_peak", "fidelity", "extra")
# Nominal dense peaks (vendor datasheets), TFLOP/s or TOP/s: FP32 (CUDA cores), FP16 and INT8 (tensor cores).
GPU_PEAKS_T = {
    "H100 SXM": {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0},
    "H100 PCIe": {"fp32": 51.0, "fp16": 756.0, "int8": 1513.0},
    "H100 NVL": {"fp32": 60.0, "fp16": 835.0, "int8": 1671.0},
    "H200": {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0},
    "A100": {"fp32": 19.5, "fp16": 312.0, "int8": 624.0},
}


def latency_stats(ms: list[float] | np.ndarray) -> dict:
    """p50/p90/p99/mean of per-iteration milliseconds, with a 95% normal-approximation CI of the mean."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timed iterations: iters must be >= 1")
    half = 1.96 * a.std(ddof=1) / np.sqrt(a.size) if a.size > 1 else 0.0
    return {"p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "mean_ci95_ms": [float(a.mean() - half), float(a.mean() + half)], "n": int(a.size)}


def make_row(name: str, backend: str, batch: int, **fields) -> dict:
    """A result row with every key of :data:`ROW_KEYS` (missing ones None / {})."""
    row = {"name": name, "backend": backend, "batch": batch, "skipped": None, "latency_ms": None, "stages_ms": {},
           "throughput_per_s": None, "memory": {}, "flops": {}, "fraction_of_peak": None, "fidelity": {},
           "extra": {}}
    bad = set(fields) - set(ROW_KEYS)
    assert not bad, f"unknown row fields {bad}"
    row.update(fields)
    if row["latency_ms"] and row["throughput_per_s"] is None:
        row["throughput_per_s"] = 1e3 * batch / row["latency_ms"]["p50_ms"]
    return row


def _cpu_facts() -> dict:
    facts: dict = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    for line in info.splitlines():  # the first processor's entries
        key, _, val = (x.strip() for x in line.partition(":"))
        if key == "model name" and "model" not in facts:
            facts["model"] = val
        elif key == "cpu MHz" and "mhz" not in facts:
            facts["mhz"] = float(val)
        elif key == "flags" and "flags" not in facts:
            facts["flags"] = sorted(set(val.split()) & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                                        "amx_int8", "amx_bf16", "asimd", "sve"})
    facts["cpu"] = facts.pop("model", facts["cpu"])
    try:
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return facts


def _gpu_facts() -> dict | None:
    """GPU name, compute capability, clocks and power limit (nvidia-smi), Jetson power mode (nvpmodel)."""
    facts: dict = {}
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        p = torch.cuda.get_device_properties(0)
        facts.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gb=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count)
    except ImportError:
        return None
    if shutil.which("nvidia-smi"):
        q = "clocks.sm,clocks.max.sm,clocks.mem,power.limit,driver_version"
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            facts.update(zip(q.split(","), [v.strip() for v in r.stdout.splitlines()[0].split(",")]))
    if shutil.which("nvpmodel"):
        r = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=20)
        facts["jetson_power_mode"] = " ".join(r.stdout.split())[:200]
    return facts


def machine_info() -> dict:
    return {**_cpu_facts(), "platform": platform.platform(), "python": platform.python_version(),
            "gpu": _gpu_facts()}


_GEMM_CACHE: dict[tuple[int, int], float] = {}


def measured_gemm_gflops(threads: int = 2, n: int = 1024, repeats: int = 5) -> float | None:
    """FP32 GEMM GFLOP/s measured on this CPU at start: ONNX Runtime's MatMul (MLAS, the kernel the ort-cpu
    rows run) of two n x n matrices with ``threads`` threads, best of ``repeats``; cached per process. None
    when onnxruntime or onnx is missing."""
    if (threads, n) in _GEMM_CACHE:
        return _GEMM_CACHE[threads, n]
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n)).astype(np.float32)
    sess.run(None, {"A": a})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"A": a})
        best = min(best, time.perf_counter() - t)
    _GEMM_CACHE[threads, n] = 2 * n ** 3 / best / 1e9
    return _GEMM_CACHE[threads, n]


def device_peak_gflops(machine: dict, device: str, precision: str, threads: int = 2) -> float | None:
    """Peak GFLOP/s of the device a backend runs on, or None when not known.

    CPU: measured, not assumed (:func:`measured_gemm_gflops`, the FP32 GEMM ONNX Runtime reaches here with the
    bench's threads); FP16 rows use it too (ONNX Runtime's CPU kernels compute FP16 graphs in FP32); INT8 rows
    get None (no INT8 GEMM is measured, so no fraction is claimed). GPU: :data:`GPU_PEAKS_T` by name.
    ``EDGESEG_PEAK_GFLOPS`` overrides both (e.g. for a Jetson).
    """
    precision = "int8" if precision.startswith("int8") else precision
    if os.environ.get("EDGESEG_PEAK_GFLOPS"):
        return float(os.environ["EDGESEG_PEAK_GFLOPS"])
    if device == "cuda":
        name = (machine.get("gpu") or {}).get("name", "")
        for key, peaks in GPU_PEAKS_T.items():
            if all(part in name for part in key.split()):
                return peaks[precision] * 1e3
        return None
    if precision == "int8":
        return None
    return measured_gemm_gflops(threads)


def versions() -> dict:
    import importlib.metadata as md

    from edgeseg import __version__

    out = {"edgeseg": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "open_clip_torch", "tensorrt", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def new_document(benchmark: str, settings: dict) -> dict:
    return {"benchmark": benchmark, "command": "edgeseg " + " ".join(sys.argv[1:]) if sys.argv[1:] else "",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(),
            "versions": versions(), "settings": settings, "rows": []}


def write_document(doc: dict, out: str | Path, plot: bool = True) -> list[Path]:
    """Write ``out`` (JSON), ``out`` .md (table) and, with matplotlib, ``out`` .png (plot); atomically each."""
    from edgeseg.export.bench.report import markdown, plot_png

    out = Path(out)
    atomic_write_bytes(out, (json.dumps(doc, indent=2, default=float) + "\n").encode())
    written = [out]
    md_path = out.with_suffix(".md")
    atomic_write_bytes(md_path, (markdown(doc) + "\n").encode())
    written.append(md_path)
    if plot:
        png = plot_png(doc, out.with_suffix(".png"))
        if png:
            written.append(png)
    return written


def load_document(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark result {str(path)!r} not found; produce it with edgeseg bench ...")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run the benchmark that wrote it") from None
    if not isinstance(doc, dict) or "rows" not in doc:
        raise ValueError(f"{path} is not an edgeseg benchmark result (no 'rows'); re-run edgeseg bench ...")
    return doc


def compare(a: dict, b: dict) -> list[dict]:
    """Rows present (and timed) in both documents, matched on (name, backend, batch): speed-up of B over A as the
    ratio of medians A.p50 / B.p50 (> 1: B is faster), and per stage where both have stages."""
    index = {(r["name"], r["backend"], r["batch"]): r for r in a["rows"] if r.get("latency_ms")}
    out = []
    for r in b["rows"]:
        key = (r["name"], r["backend"], r["batch"])
        ra = index.get(key)
        if ra is None or not r.get("latency_ms"):
            continue
        stages = {s: ra["stages_ms"][s] / v for s, v in r.get("stages_ms", {}).items()
                  if v and ra.get("stages_ms", {}).get(s)}
        out.append({"name": key[0], "backend": key[1], "batch": key[2], "a_p50_ms": ra["latency_ms"]["p50_ms"],
                    "b_p50_ms": r["latency_ms"]["p50_ms"],
                    "speedup_b_over_a": ra["latency_ms"]["p50_ms"] / r["latency_ms"]["p50_ms"], "stages": stages})
    return out


def ratios_within(doc: dict, baseline: str) -> list[dict]:
    """Speed-up of every backend over ``baseline`` for each (name, batch) of one document (same run)."""
    base = {(r["name"], r["batch"]): r for r in doc["rows"] if r["backend"] == baseline and r.get("latency_ms")}
    out = []
    for r in doc["rows"]:
        b = base.get((r["name"], r["batch"]))
        if b is None or r["backend"] == baseline or not r.get("latency_ms"):
            continue
        out.append({"name": r["name"], "batch": r["batch"], "backend": r["backend"], "baseline": baseline,
                    "speedup_p50": b["latency_ms"]["p50_ms"] / r["latency_ms"]["p50_ms"]})
    return out
