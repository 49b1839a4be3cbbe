import json

from edgeseg.export.bench import bench_encoders, format_results


def test_bench_writes_json_with_every_field(tmp_path):
    out = tmp_path / "r.json"
    doc = bench_encoders(["lseg_encoder/toy-tiny"], iters=3, out=out)
    assert json.loads(out.read_text()) == doc
    r = doc["results"][0]
    for side in ("pytorch_eager_fp32", "ort_cpu_fp32"):
        s = r[side]
        assert s["n"] == 3 and 0 < s["p50_ms"] <= s["p99_ms"] and s["mean_ci95_ms"][0] <= s["mean_ms"]
    assert r["speedup_ort_vs_torch_p50"] == r["pytorch_eager_fp32"]["p50_ms"] / r["ort_cpu_fp32"]["p50_ms"]
    assert doc["machine"]["cores"] and doc["versions"]["onnxruntime"]
    assert "lseg_encoder/toy-tiny" in format_results(doc)
