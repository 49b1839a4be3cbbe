"""The benchmark harness on tiny models: valid documents with every field, FLOP counting, compare ratios.
No test here asserts a speed: timings are facts of the machine, the harness is what is tested."""

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.cli import main
from edgeseg.export.bench.results import ROW_KEYS, compare, load_document, ratios_within, write_document
from edgeseg.export.bench.components import bench_components
from edgeseg.export.bench.pipelines import bench_pipeline, bench_runtime, bench_text_cache
from edgeseg.export.bench.flops import count_flops


@pytest.fixture(scope="module")
def components_doc():
    return bench_components(["lseg_encoder/toy-tiny"], ["torch-cpu-fp32", "ort-cpu-fp32", "ort-cuda-fp16"],
                            batches=(1, 2), iters=3, warmup=1, progress=False)


def _check_stats(s, n):
    assert s["n"] == n and 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert s["mean_ci95_ms"][0] <= s["mean_ms"] <= s["mean_ci95_ms"][1]


def test_components_document_has_every_field(components_doc, tmp_path):
    doc = components_doc
    assert doc["benchmark"] == "components" and doc["machine"]["cores"] and doc["versions"]["onnxruntime"]
    assert set(doc["settings"]) >= {"iters", "warmup", "threads", "backends", "batches", "baseline"}
    assert len(doc["rows"]) == 6
    for r in doc["rows"]:
        assert set(r) == set(ROW_KEYS)
    timed = [r for r in doc["rows"] if not r["skipped"]]
    assert {(r["backend"], r["batch"]) for r in timed} == {(b, n) for b in ("torch-cpu-fp32", "ort-cpu-fp32")
                                                           for n in (1, 2)}
    for r in timed:
        _check_stats(r["latency_ms"], 3)
        assert r["throughput_per_s"] == pytest.approx(1e3 * r["batch"] / r["latency_ms"]["p50_ms"])
        assert r["memory"]["peak_rss_mb"] > r["memory"]["baseline_rss_mb"] > 0, r["memory"]
        assert r["flops"]["total"] > 0 and r["extra"]["input_shapes"]["image"][0] == r["batch"]
        assert r["fidelity"]["cosine_vs_torch_fp32"] > 0.9999
        assert r["fraction_of_peak"] is None or 0 < r["fraction_of_peak"] < 1
    by = {(r["backend"], r["batch"]): r for r in timed}
    assert by["ort-cpu-fp32", 2]["flops"]["total"] == pytest.approx(2 * by["ort-cpu-fp32", 1]["flops"]["total"])
    # ONNX Runtime runs only the graph; PyTorch carries torch + the model in the same process
    assert by["ort-cpu-fp32", 1]["memory"]["baseline_rss_mb"] < by["torch-cpu-fp32", 1]["memory"]["baseline_rss_mb"]
    skipped = [r for r in doc["rows"] if r["skipped"]]
    assert {r["backend"] for r in skipped} == {"ort-cuda-fp16"} and "CUDAExecutionProvider" in skipped[0]["skipped"]
    files = write_document(doc, tmp_path / "c.json")
    assert [f.suffix for f in files] == [".json", ".md", ".png"]
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(doc))
    assert "| lseg_encoder/toy-tiny | ort-cpu-fp32 | 2 |" in files[1].read_text()
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_within_run_ratios(components_doc, tmp_path):
    a = components_doc
    b = copy.deepcopy(a)
    for r in b["rows"]:
        if r["latency_ms"] and r["backend"] == "ort-cpu-fp32":
            r["latency_ms"]["p50_ms"] /= 2
    rows = compare(a, b)
    assert len(rows) == 4
    for r in rows:
        assert r["speedup_b_over_a"] == pytest.approx(2.0 if r["backend"] == "ort-cpu-fp32" else 1.0)
    within = ratios_within(a, "torch-cpu-fp32")
    for r in within:
        base = next(x for x in a["rows"] if x["backend"] == "torch-cpu-fp32" and x["batch"] == r["batch"])
        mine = next(x for x in a["rows"] if x["backend"] == r["backend"] and x["batch"] == r["batch"])
        assert r["speedup_p50"] == base["latency_ms"]["p50_ms"] / mine["latency_ms"]["p50_ms"]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert load_document(pa)["rows"] == json.loads(json.dumps(a))["rows"]


def test_compare_cli_prints_ratios_and_refuses_bad_files(components_doc, tmp_path, capsys):
    pa = tmp_path / "a.json"
    pa.write_text(json.dumps(components_doc))
    main(["bench", "compare", str(pa), str(pa)])
    out = capsys.readouterr().out
    assert out.count("| 1.00x |") == 4
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(SystemExit, match="not an edgeseg benchmark result"):
        main(["bench", "compare", str(pa), str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="not found"):
        main(["bench", "compare", str(pa), str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match="unknown backend"):
        main(["bench", "components", "lseg_encoder/toy-tiny", "--backends", "ort-gpu"])


def test_pipeline_stages_and_agreement(lseg_bundle):
    doc = bench_pipeline(lseg_bundle, ["torch-cpu-fp32", "ort-cpu-fp32"], iters=2, warmup=1, progress=False)
    rows = {r["backend"]: r for r in doc["rows"]}
    for r in rows.values():
        assert set(r) == set(ROW_KEYS) and r["skipped"] is None
        assert set(r["stages_ms"]) == {"preprocess", "encoder", "text", "head", "postprocess"}
        _check_stats(r["latency_ms"], 2)
    assert rows["ort-cpu-fp32"]["fidelity"]["label_map_agreement"] > 0.98


def test_pipeline_refuses_a_converted_bundle(built):
    with pytest.raises(ValueError, match="pass the FP32 bundle"):
        bench_pipeline(built("lseg", "int8"), ["ort-cpu-fp32"], iters=1)


def test_text_cache_and_runtime_documents(lseg_bundle):
    doc = bench_text_cache(lseg_bundle, ["circle", "grass"], iters=2)
    assert [r["backend"] for r in doc["rows"]] == ["encode", "memory-hit", "disk-hit"]
    for r in doc["rows"]:
        _check_stats(r["latency_ms"], 2)
    rt = bench_runtime(iters=2)["rows"][0]
    assert rt["extra"]["imports_torch"] is False
    size = rt["extra"]["install_size"]["distributions_mb"]
    assert {"onnxruntime", "numpy", "tokenizers", "pillow"} <= set(size) and "torch" not in size


def _graph(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_counted_from_the_graph(tmp_path):
    w = numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.zeros((8 * 5 * 5, 6), np.float32), "m")
    shape = numpy_helper.from_array(np.array([-1, 8 * 5 * 5], np.int64), "shape")
    model = _graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("Reshape", ["r", "shape"], ["f"]),
                    helper.make_node("MatMul", ["f", "m"], ["y"], name="mm")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 7, 7])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])], [w, m, shape])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    fc = count_flops(path, {"x": (3, 4, 7, 7)})
    conv = 2 * (3 * 8 * 5 * 5) * (4 * 3 * 3)
    mm = 2 * (3 * 6) * (8 * 5 * 5)
    assert fc.by_op == {"Conv": conv, "MatMul": mm} and fc.total == conv + mm and not fc.unresolved
    with pytest.raises(ValueError, match="no input"):
        count_flops(path, {"image": (1, 4, 7, 7)})
    with pytest.raises(ValueError, match="rank 4"):
        count_flops(path, {"x": (1, 4, 7)})


def test_bench_backend_names_follow_the_runtime_vocabulary():
    """Runtime rows are <runtime backend>-<precision> with a backend of edgeseg.runtime.backends; the committed
    result documents name only known rows, so edgeseg bench compare / report keep reading them."""
    from pathlib import Path

    from edgeseg.export.bench.components import BACKENDS
    from edgeseg.runtime.backends import BACKENDS as RUNTIME_BACKENDS

    for name, b in BACKENDS.items():
        if b.engine == "torch":
            assert name.startswith(f"torch-{b.device}-") and not b.provider, name
        else:
            assert b.provider in RUNTIME_BACKENDS and name == f"{b.provider}-{b.precision}", name
            assert b.engine == RUNTIME_BACKENDS[b.provider].session and b.device == RUNTIME_BACKENDS[b.provider].device
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("benchmark") in ("components", "pipeline"):
            assert {r["backend"] for r in load_document(path)["rows"]} <= set(BACKENDS), path.name
