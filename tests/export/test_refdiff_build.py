"""FP16 / INT8 builds of every Ref-Diff component (toy bundle): pipeline-recorded calibration, streamed in
strides; TensorRT lint clean; the runtime runs the built bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeseg.export.build.calib_pipeline import FeedSpool, plan_stride  # noqa: E402
from edgeseg.export.build.lint import TARGETS  # noqa: E402

CALIB_N = 4  # CI: 4 ToyWorld scenes x 2 expressions through the FP32 pipeline (the default is 64)


@pytest.fixture(scope="module")
def refdiff_builds(refdiff_bundle, tmp_path_factory):
    from edgeseg.export.build.builder import build_bundle

    root = tmp_path_factory.mktemp("refdiff-builds")
    return {p: build_bundle(refdiff_bundle, p, out=root / p, calib_n=CALIB_N, progress=p == "int8")
            for p in ("fp16", "int8")}


def test_spool_keeps_a_bounded_sample_and_streams_it(tmp_path):
    spool = FeedSpool(tmp_path, cap=3, seed=0)
    for i in range(10):
        spool.add("c", {"x": np.full((1 + i % 2, 2), i, np.float32)})
    assert spool.summary() == {"c": {"calls": 10, "kept": 3}}
    reader = spool.reader("c")
    assert len(reader) == 3 and sum(reader.groups) == 3
    shapes = [d["x"].shape for d in reader]  # grouped: same shapes are adjacent
    assert shapes == sorted(shapes)
    reader.set_range(0, 1)
    assert reader.get_next() is not None and reader.get_next() is None


def test_stride_divides_every_shape_group_and_fits_the_budget():
    assert plan_stride([8, 4], per_sample=1, budget=100) == 4
    assert plan_stride([8, 3], per_sample=1, budget=100) == 1
    assert plan_stride([64], per_sample=10, budget=100) == 8  # 10 fits, 8 is the largest divisor under it


def test_every_component_builds_and_passes_the_tensorrt_lint(refdiff_builds, refdiff_bundle):
    names = set(json.loads((refdiff_bundle / "manifest.json").read_text())["components"])
    for precision, folder in refdiff_builds.items():
        man = json.loads((folder / "manifest.json").read_text())
        assert set(man["components"]) == names and man["precision"] == precision
        assert set(man["build"]["lint"]) == names
        for name, by_target in man["build"]["lint"].items():
            for target in TARGETS:
                assert by_target[target]["errors"] == 0, f"{precision}/{name} [{target}]: {by_target[target]}"


def test_int8_is_calibrated_from_the_pipeline(refdiff_builds, capsys):
    man = json.loads((refdiff_builds["int8"] / "manifest.json").read_text())
    recorded = man["build"]["calibration"]["pipeline"]["components"]
    assert {"sd_text", "vae_encoder", "unet_attn", "sam_encoder", "clip_masked", "clip_hard"} <= set(recorded)
    assert not {"sam_decoder", "sam_masks"} & set(recorded)  # kept FP32 whole (int8_exclude ".*"): not recorded
    # the UNet: 2 DDIM timesteps per image (strength 0.1 of 20 steps), uncond + cond batched in each call
    assert recorded["unet_attn"]["calls"] >= CALIB_N
    unet = man["components"]["unet_attn"]["converted"]
    assert unet["quantized_nodes"] > 0 and unet["calibration_samples"] == recorded["unet_attn"]["kept"]
    assert unet["estimated_peak_mb"] > 0 and unet["calibration_stride"] >= 1
    for name in ("vae_encoder", "sam_encoder", "clip_masked", "clip_hard"):
        assert man["components"][name]["converted"]["quantized_nodes"] > 0, name
    # the SAM decoder and its post-processing stay FP32 (their int8_exclude hints: the isolation study)
    for name in ("sam_decoder", "sam_masks"):
        assert man["components"][name]["converted"]["quantized_nodes"] == 0, name
    # clip_hard: the released hard crops at shortest side 96, aspect kept (many shapes: stride 1 unless they repeat)
    hard = man["components"]["clip_hard"]["converted"]
    assert hard["calibration_samples"] == recorded["clip_hard"]["kept"] >= CALIB_N


def test_int8_unet_keeps_attention_matmuls_and_cross_attention_unquantized(refdiff_builds):
    import onnx

    model = onnx.load(str(refdiff_builds["int8"] / "unet_attn.onnx"))
    deq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and deq.intersection(n.input)]
    assert any(n.op_type == "Conv" for n in quantized)
    assert not any(n.op_type == "Softmax" and deq.intersection(n.input) for n in model.graph.node)
    assert not any("attn2" in n.name for n in quantized)  # the cross-attention read for the maps stays FP32


def test_int8_sam_encoder_keeps_its_neck_fp32(refdiff_builds):
    import onnx

    model = onnx.load(str(refdiff_builds["int8"] / "sam_encoder.onnx"))
    deq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.name.startswith("/image_encoder/")]
    neck = [n for n in convs if "/neck/" in n.name]
    assert len(neck) == 2 and not any(deq.intersection(n.input) for n in neck)  # the embedding's last layers
    assert any(deq.intersection(n.input) for n in convs if "/blocks." in n.name)  # the ViT blocks stay INT8


def test_fp16_unet_keeps_softmax_norms_and_the_attention_output_fp32(refdiff_builds):
    import onnx

    model = onnx.load(str(refdiff_builds["fp16"] / "unet_attn.onnx"))
    for out in model.graph.output:
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    f16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert f16, "no FP16 weights in the FP16 UNet"
    kept = [n for n in model.graph.node if n.op_type in ("Softmax", "InstanceNormalization", "LayerNormalization")]
    assert kept and not any(f16.intersection(n.input) for n in kept)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_runtime_runs_the_built_bundles(refdiff_builds, refdiff_bundle, precision):
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    sample = ReferWorld(5, ToyWorldConfig(size=96))[0]
    pred = RefDiffPredictor(refdiff_builds[precision], cache_dir=None, parser=None)
    res = pred.segment(sample.scene.image, sample.expression.text)
    assert res.mask.shape == sample.scene.image.shape[:2] and res.mask.any()
    assert np.isfinite(res.attention).all() and np.isfinite(res.scores["total"]).all()


def test_calibration_that_cannot_fit_is_refused_in_one_line_and_writes_nothing(refdiff_bundle, tmp_path, monkeypatch):
    from edgeseg.export.build import calib_pipeline
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.errors import user_message

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    1048576 kB\n")
    assert calib_pipeline.available_memory(meminfo) == 1 << 30
    assert calib_pipeline.available_memory(tmp_path / "missing") is None
    est = {"weights": 3 << 30, "per_sample": 12 << 30, "stride": 1, "peak": 21 << 30}
    calib_pipeline.check_fits("unet_attn", est, None)  # unknown: no refusal
    calib_pipeline.check_fits("unet_attn", est, 25 << 30)  # 21 GB fit in 85 % of 25 GB
    with pytest.raises(ValueError, match=r"^INT8 calibration of unet_attn needs about 21\.0 GB \(weights 3\.0 GB x 3 "
                                         r"\+ 1 x 12\.0 GB of activations a sample\), more than 85% of the 24\.0 GB "
                                         r"available: build on a machine with more memory, or build --precision fp16 "
                                         r"\(no calibration\)$"):
        calib_pipeline.check_fits("unet_attn", est, 24 << 30)  # the full-size UNet here: estimated 21.8, killed
    monkeypatch.setattr(calib_pipeline, "available_memory", lambda: 1024)  # 1 KiB: nothing fits
    out = tmp_path / "int8"
    with pytest.raises(ValueError) as err:
        build_bundle(refdiff_bundle, "int8", out=out, calib_n=1, progress=False)
    msg = user_message(err.value)
    assert msg is not None and msg.startswith("INT8 calibration of sd_text needs about ")
    assert msg.endswith("GB of activations a sample), more than 85% of the 0.0 GB available: build on a machine "
                        "with more memory, or build --precision fp16 (no calibration)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meminfo"]  # no bundle, no staging folder left
