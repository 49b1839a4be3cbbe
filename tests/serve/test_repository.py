"""``edgeseg triton-repo``: the model repository for the standard Triton container. Every config.pbtxt parses
against Triton's ModelConfig protobuf (tritonclient); component configs match their ONNX graphs; the BLS
pipeline, run on the repository's own files, equals the runtime; and the whole repository runs on PyTriton's
tritonserver with the components in its Python backend (the onnxruntime / tensorrt backends of the standard
container cannot run here: those two platforms are checked by schema only)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from serve_support import EXPRESSIONS, LABELS, MISSING, free_ports, needs_triton

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed (pip install 'edgeseg[serve]')")


def parse(path: Path):
    from edgeseg.serve.config import validate

    return validate(path.read_text())


@pytest.fixture(scope="module")
def repo(bundles, tmp_path_factory) -> Path:
    from edgeseg.serve.repository import export_repository

    out = tmp_path_factory.mktemp("repo") / "models"
    export_repository(list(bundles.values()), out, list(bundles))
    return out


def test_every_config_parses_and_components_match_their_graphs(repo, bundles):
    import onnxruntime as ort

    configs = sorted(repo.glob("*/config.pbtxt"))
    # one model per component of the four toy bundles, plus one pipeline (BLS) model per bundle
    from edgeseg.runtime import Bundle

    assert len(configs) == sum(len(Bundle(b).components) + 1 for b in bundles.values())
    # ModelConfig.DataType: TYPE_FP16 = 10, TYPE_FP32 = 11, TYPE_INT64 = 9 (sam_masks returns float16 masks)
    ttype = {"tensor(float16)": 10, "tensor(float)": 11, "tensor(int64)": 9}
    for path in configs:
        cfg = parse(path)
        assert cfg.name == path.parent.name
        if "." not in cfg.name:  # a pipeline
            assert cfg.backend == "python" and cfg.max_batch_size == 8 and cfg.dynamic_batching is not None
            params = {k: v.string_value for k, v in cfg.parameters.items()}
            assert params["edgeseg_bundle"] == "bundle" and (path.parent / "1" / "model.py").is_file()
            # the pipeline's bundle folder holds the manifest and tokenizers only
            assert sorted(p.name for p in (path.parent / "1" / "bundle").iterdir()) == sorted(
                {"manifest.json", *(f.name for f in Path(bundles[cfg.name]).glob("*tokenizer*.json"))})
            continue
        assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == 1  # KIND_GPU
        sess = ort.InferenceSession(str(path.parent / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        skip = 1 if cfg.max_batch_size else 0
        for tensors, graph in ((cfg.input, sess.get_inputs()), (cfg.output, sess.get_outputs())):
            assert [t.name for t in tensors] == [g.name for g in graph]
            for t, g in zip(tensors, graph):
                assert t.data_type == ttype[g.type]
                # a symbolic graph dim accepts any config dim (the rule of Triton's onnxruntime backend)
                dims = list(g.shape[skip:]) or [1]
                assert len(t.dims) == len(dims), (cfg.name, t.name)
                assert all(not isinstance(d, int) or d == c for c, d in zip(t.dims, dims)), (cfg.name, t.name)
    unet = parse(repo / "refdiff.unet_attn" / "config.pbtxt")
    assert unet.max_batch_size == 16 and list(unet.input[1].reshape.shape) == []
    head = parse(repo / "lseg.lseg_head" / "config.pbtxt")
    assert head.max_batch_size == 0 and list(head.input[1].dims) == [-1, 128]


def test_engine_bundles_become_tensorrt_plans_and_options_reach_the_configs(lseg_bundle, tmp_path):
    from edgeseg.serve.repository import export_repository

    trt = tmp_path / "lseg_trt"
    shutil.copytree(lseg_bundle, trt)
    m = json.loads((trt / "manifest.json").read_text())
    m["backend"] = "trt"
    for name, c in m["components"].items():
        data = f"not a real engine: {name}".encode()
        (trt / f"{name}.plan").write_bytes(data)
        c["engine"] = {"file": f"{name}.plan", "sha256": hashlib.sha256(data).hexdigest()}
    (trt / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "repo"
    written = export_repository([trt, lseg_bundle], out, ["seg_trt", "seg"], instances=2, trt_accelerator="fp16")
    assert len(written) == 8 and all(p.is_file() for p in written)
    enc = parse(out / "seg_trt.lseg_encoder" / "config.pbtxt")
    assert enc.platform == "tensorrt_plan" and (out / "seg_trt.lseg_encoder" / "1" / "model.plan").is_file()
    assert enc.max_batch_size == 4 and enc.instance_group[0].count == 2
    onnx = parse(out / "seg.lseg_encoder" / "config.pbtxt")
    accel = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert not parse(out / "seg_trt.lseg_encoder" / "config.pbtxt").optimization.execution_accelerators.ListFields()
    with pytest.raises(ValueError, match="GPU instances only"):
        export_repository([lseg_bundle], tmp_path / "cpu", device="cpu", trt_accelerator="fp16")


class FakeTriton:
    """BLS calls run on the repository's ONNX files with onnxruntime, after Triton's own shape check against
    the component's config.pbtxt (batch axis, dims, reshape)."""

    def __init__(self, repo: Path):
        self.repo, self.sessions, self.calls = repo, {}, []

    def __call__(self, model: str, feeds: dict, outputs: list[str]) -> dict:
        import onnxruntime as ort

        cfg = parse(self.repo / model / "config.pbtxt")
        for t in cfg.input:
            shape = list(feeds[t.name].shape)
            if cfg.max_batch_size:
                assert 1 <= shape[0] <= cfg.max_batch_size, (model, t.name, shape)
                shape = shape[1:]
            assert len(shape) == len(t.dims) and all(d in (-1, s) for d, s in zip(t.dims, shape)), (model, t.name)
        if model not in self.sessions:
            self.sessions[model] = ort.InferenceSession(str(self.repo / model / "1" / "model.onnx"),
                                                        providers=["CPUExecutionProvider"])
        sess = self.sessions[model]
        self.calls.append(model)
        f = {i.name: feeds[i.name].reshape(-1) if len(i.shape) == 1 else feeds[i.name] for i in sess.get_inputs()}
        return dict(zip(outputs, sess.run(outputs, f)))


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg", "refdiff"])
def test_the_bls_pipeline_equals_the_runtime(method, repo, bundles, predictors, images):
    """The pipeline model's own predictor, built from its config.pbtxt parameters, on BLS calls."""
    from google.protobuf import json_format

    from edgeseg.serve.triton_model import _params, build_predictor

    cfg = json_format.MessageToDict(parse(repo / method / "config.pbtxt"), preserving_proto_field_name=True)
    params = dict(_params(cfg), edgeseg_cache_dir="none")
    fake = FakeTriton(repo)
    remote = build_predictor(params, repo / method / "1", fake)
    ref = predictors[method]
    if method == "refdiff":
        got = remote.predict_many(EXPRESSIONS, state=remote.encode(images[4]))
        want = ref.predict_many(EXPRESSIONS, state=ref.encode(images[4]))
        for g, w in zip(got, want):
            assert np.array_equal(g.mask, w.mask) and g.target_word == w.target_word
            np.testing.assert_allclose(g.scores["total"], w.scores["total"], atol=1e-5)
    else:
        for image in images[4:7]:
            got = remote.predict(LABELS, state=remote.encode(image))
            want = ref.predict(LABELS, state=ref.encode(image))
            assert np.array_equal(got.label_map, want.label_map)
    assert {c.split(".")[0] for c in fake.calls} == {method} and len(set(fake.calls)) >= 3
    assert remote.bundle.providers_used and all(v.startswith("triton:") for v in remote.bundle.providers_used.values())


@needs_triton
def test_the_exported_repository_runs_on_the_pytriton_server(bundles, images, tmp_path, predictors):
    """lseg + refdiff exported with --component-backend python, served by PyTriton's tritonserver: the pipeline
    models' BLS calls go through Triton for real; answers equal the runtime's."""
    import tritonclient.http as httpclient

    from edgeseg.serve import Ports, TritonServer
    from edgeseg.serve.client import refer, segment
    from edgeseg.serve.repository import export_repository

    assert not MISSING
    out = tmp_path / "models"
    export_repository([bundles["lseg"], bundles["refdiff"]], out, ["lseg", "refdiff"], device="cpu",
                      component_backend="python")
    with TritonServer(out, Ports(*free_ports()), exit_timeout_s=1) as server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            pred = predictors["lseg"]
            got = segment(client, "lseg", images[5], LABELS)
            assert np.array_equal(got["label_map"], pred.predict(LABELS, state=pred.encode(images[5])).label_map)
            pred = predictors["refdiff"]
            got = refer(client, "refdiff", images[6], EXPRESSIONS[:1])
            want = pred.predict_many(EXPRESSIONS[:1], state=pred.encode(images[6]))[0]
            assert np.array_equal(got["masks"][0], want.mask) and got["target_words"] == [want.target_word]
        finally:
            client.close()


def test_the_cli_writes_a_repository_and_refuses_in_one_line(lseg_bundle, tmp_path, capsys):
    from edgeseg.cli import main

    main(["triton-repo", str(lseg_bundle), "--name", "seg", "--out", str(tmp_path / "models"), "--max-batch", "4",
          "--instances", "3", "--no-dynamic-batching"])
    text = capsys.readouterr().out
    assert "seg.lseg_encoder" in text and "docker run" in text and str(tmp_path / "models") in text
    cfg = parse(tmp_path / "models" / "seg" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and not cfg.HasField("dynamic_batching") and cfg.instance_group[0].count == 3
    with pytest.raises(SystemExit) as e:
        main(["triton-repo", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert str(e.value).startswith("edgeseg triton-repo: error: bundle folder") and "\n" not in str(e.value)


def test_the_kserve_example_manifest_is_valid_yaml():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve" / "kserve-inferenceservice.yaml").read_text())
    assert doc["kind"] == "InferenceService" and doc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"
