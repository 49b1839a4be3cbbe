"""``edgeseg bench pipeline <refdiff bundle>``: per-stage rows per backend and K, skip reasons, exit status,
nothing written beside the bundle; the CPU peak is measured, not assumed."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")


def test_rows_per_k_with_stages_and_memory(refdiff_bundle, tmp_path):
    from edgeseg.export.bench.refdiff_pipeline import bench_refdiff

    before = sorted(p.name for p in refdiff_bundle.parent.iterdir())
    doc = bench_refdiff(refdiff_bundle, ["ort-cpu-fp32", "ort-cuda-fp16"], ks=(1, 2), iters=1, warmup=0,
                        workdir=tmp_path / "work", progress=False)
    ran = [r for r in doc["rows"] if not r["skipped"]]
    assert [r["extra"]["k"] for r in ran] == [1, 2]
    for r in ran:
        assert {"text", "unet", "score"} <= set(r["stages_ms"]) and len(r["stages_ms"]) > 3, r["stages_ms"]
        assert r["memory"]["peak_rss_mb"] > 0 and r["latency_ms"]["p50_ms"] > 0
    assert ran[0]["extra"]["per_extra_expression_ms"] is not None
    skipped = [r for r in doc["rows"] if r["skipped"]]
    if skipped:
        assert "CUDAExecutionProvider" in skipped[0]["skipped"]
    assert sorted(p.name for p in refdiff_bundle.parent.iterdir()) == before  # no variant beside the bundle


def test_all_rows_skipped_exits_non_zero(refdiff_bundle, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: the ort-cuda row would run")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench", "pipeline", str(refdiff_bundle),
                           "--backends", "ort-cuda-fp16", "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "every row was skipped" in proc.stderr


def test_cpu_peak_is_a_measured_gemm():
    from edgeseg.export.bench.results import device_peak_gflops, measured_gemm_gflops

    g = measured_gemm_gflops(1, n=256, repeats=2)
    assert g and g > 0.1
    assert device_peak_gflops({}, "cpu", "int8") is None
