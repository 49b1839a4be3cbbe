"""Chunked INT8 calibration (graphs whose activations of one sample do not fit the budget, the full-size SD
UNet): the same ranges as onnxruntime's own calibrator, through the builder, in bounded chunks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from edgeseg.export.build import calib_pipeline  # noqa: E402
from edgeseg.export.build.calib_chunked import plan_chunks, tensor_sizes  # noqa: E402


@pytest.fixture(scope="module")
def spool(refdiff_bundle):
    from edgeseg.export.build.quantize import calibration_set

    calib = calibration_set(1, size=64)
    spool, _ = calib_pipeline.pipeline_spool("refdiff", refdiff_bundle, calib, cap=4, progress=False)
    yield spool
    calib_pipeline.drop_spool(spool)


def _scales(path) -> dict[str, np.ndarray]:
    """Activation/weight tensor -> the scale of its QuantizeLinear."""
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.input[0]: init[n.input[1]] for n in m.graph.node if n.op_type == "QuantizeLinear"}


def test_chunks_cover_every_node_in_order_within_the_budget(refdiff_bundle, spool):
    path = refdiff_bundle / "vae_encoder.onnx"
    model, sizes = tensor_sizes(path, next(iter(spool.reader("vae_encoder"))))
    nodes = list(model.graph.node)
    budget = max(sizes.values()) * 2
    chunks = plan_chunks(nodes, sizes, budget)
    assert [i for c in chunks for i in c] == list(range(len(nodes)))
    assert len(chunks) > 3
    for c in chunks:
        held = sum(sizes.get(o, 0) for i in c for o in nodes[i].output)
        assert held <= budget or len(c) == 1


@pytest.mark.parametrize("name", ["vae_encoder", "sam_encoder"])
def test_chunked_calibration_gives_onnxruntimes_own_scales(refdiff_bundle, spool, tmp_path, monkeypatch, name, capsys):
    from edgeseg.export.build.builder import _int8_component
    from edgeseg.runtime.bundle import Bundle

    source = Bundle(refdiff_bundle, provider="ort-cpu")
    comp = source.manifest["components"][name]
    src = source.file(source.entry(name).file)
    whole = _int8_component(name, comp, source.manifest, source, src, tmp_path / "whole.onnx", None, spool,
                            (), False, progress=True)
    assert not capsys.readouterr().out.count("in chunks")
    monkeypatch.setattr(calib_pipeline, "ACTIVATION_BUDGET", 64 << 10)  # 64 KiB: dozens of chunks
    chunked = _int8_component(name, comp, source.manifest, source, src, tmp_path / "chunked.onnx", None, spool,
                              (), False, progress=True)
    assert f"calibrating {name}: 1 pipeline samples, in chunks" in capsys.readouterr().out
    assert "calibration_chunks" not in whole and chunked["calibration_chunks"] > 10
    assert chunked["calibration_samples"] == whole["calibration_samples"] == 1
    assert chunked["quantized_nodes"] == whole["quantized_nodes"] > 10
    a, b = _scales(tmp_path / "whole.onnx"), _scales(tmp_path / "chunked.onnx")
    assert set(a) == set(b) and len(a) > 10
    for k in a:  # one sample at a time: the same histograms, so the same scales
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=k)


def test_chunks_read_external_weights_where_they_lie(refdiff_bundle, spool, tmp_path):
    """A graph with external data (every graph over 2 GB): chunk sessions read the weights from the source's
    folder (nothing written or linked beside them), and the ranges still equal onnxruntime's."""
    from edgeseg.export.build.calib_chunked import ChunkedCalibrator
    from edgeseg.export.build.quantize import INT8_POLICY, quantize_int8

    src = tmp_path / "src" / "vae_encoder.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(refdiff_bundle / "vae_encoder.onnx")), str(src), save_as_external_data=True,
              location="vae_encoder.onnx.data", size_threshold=0)
    before = sorted(p.name for p in src.parent.iterdir())
    reader = spool.reader("vae_encoder")
    cal = ChunkedCalibrator(src, INT8_POLICY.op_types, next(iter(reader)), budget=256 << 10)
    assert len(cal.chunks) > 3 and cal.collect_all(reader) == 1
    cal.save(tmp_path / "ranges.json")
    cal.close()
    assert sorted(p.name for p in src.parent.iterdir()) == before == ["vae_encoder.onnx", "vae_encoder.onnx.data"]
    quantize_int8(src, tmp_path / "chunked.onnx", reader, external=True, ranges=tmp_path / "ranges.json")
    quantize_int8(src, tmp_path / "whole.onnx", spool.reader("vae_encoder"), external=True, stride=1)
    a, b = _scales(tmp_path / "whole.onnx"), _scales(tmp_path / "chunked.onnx")
    assert set(a) == set(b) and len(a) > 10
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=k)


def test_a_graph_with_control_flow_is_refused_in_one_line(tmp_path):
    from onnx import TensorProto, helper

    from edgeseg.export.build.calib_chunked import ChunkedCalibrator

    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "b", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "if.onnx"))
    with pytest.raises(ValueError, match=r"^if\.onnx has control-flow nodes \(If/Loop/Scan\); chunked calibration "
                                         r"cuts flat graphs only: calibrate it on a machine with more memory$"):
        ChunkedCalibrator(tmp_path / "if.onnx", ("MatMul",), {"c": np.array(True), "x": np.ones(1, np.float32)}, 1)


def test_fast_histogram_equals_numpys_on_grown_edges():
    from edgeseg.export.build.calib_chunked import histogram_on_edges

    rng = np.random.default_rng(0)
    for trial in range(20):
        a = np.abs(rng.standard_normal(20000).astype(np.float32) * rng.uniform(0.01, 100))
        _, e = np.histogram(a, bins=2048)
        e = e.astype(np.float32)
        b = np.abs(rng.standard_normal(60000).astype(np.float32) * rng.uniform(0.01, 200))
        b[:50], b[50:100], b[100] = e[:50], e[-50:], np.nan  # values on edges, and a NaN
        if np.nanmax(b) > e[-1]:  # grown as onnxruntime grows it
            w = e[1] - e[0]
            e = np.hstack((e, np.arange(e[-1] + w, np.nanmax(b) + w, w)))
        np.testing.assert_array_equal(histogram_on_edges(b, e, block=4096), np.histogram(b, bins=e)[0],
                                      err_msg=f"trial {trial}")


def test_fast_collector_keeps_onnxruntimes_histograms():
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgeseg.export.build.calib_chunked import fast_collector

    rng = np.random.default_rng(1)
    ref = HistogramCollector("percentile", True, 2048, 2048, 99.999, "same")
    fast = fast_collector()("percentile", True, 2048, 2048, 99.999, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        for i in range(4):  # growing ranges: the merge path with new bins
            d = {f"t{j}": (rng.standard_normal((3, 500)) * (i + 1) * (j + 1)).astype(np.float32) for j in range(3)}
            ref.collect({k: [v] for k, v in d.items()})
            fast.collect(d)
        a, b = ref.compute_collection_result(), fast.compute_collection_result()
    assert set(a) == set(b) == {"t0", "t1", "t2"}
    for k in a:
        for x, y in zip(a[k], b[k]):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
        for x, y in zip(ref.histogram_dict[k], fast.histogram_dict[k]):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
