"""The Session interface and the one backend vocabulary: ONNX Runtime sessions satisfy the protocol and return
what a plain onnxruntime run returns, by name; the native TensorRT engine runs through the same interface (on a
fake tensorrt + cuda-python here: TensorRT cannot be installed in this environment); unknown backends are
refused in one line; old spellings still work and warn."""

import ctypes
import hashlib
import inspect
import json
import shutil
import types
import warnings

import numpy as np
import pytest

from edgeseg.runtime import Bundle, BundleError
from edgeseg.runtime import trt_backend
from edgeseg.runtime.backends import (BACKENDS, BackendNameWarning, UnknownBackendError, manifest_backend,
                                      resolve_backend)
from edgeseg.runtime.manifest import Manifest
from edgeseg.runtime.session import DeviceIOUnsupported, OrtSession, Session


def test_ort_session_satisfies_the_protocol_and_matches_plain_onnxruntime(lseg_bundle):
    import onnxruntime as ort

    b = Bundle(lseg_bundle)
    sess = b.session("lseg_encoder")
    assert isinstance(sess, OrtSession) and isinstance(sess, Session)
    assert sess.spec == b.spec("lseg_encoder") and sess.provider == "CPUExecutionProvider"
    assert not sess.supports_device_io
    with pytest.raises(DeviceIOUnsupported, match="ort-cpu .* use run\\(feeds\\)"):
        sess.device_io()
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    got = sess.run({"image": x})
    plain = ort.InferenceSession(str(lseg_bundle / b.component("lseg_encoder")["file"]),
                                 providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, {"image": x})))
    assert list(got) == list(want) == sess.spec.output_names
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(b.run("lseg_encoder", {"image": x})["pixel_embeds"], got["pixel_embeds"])
    assert b.providers_used == {"lseg_encoder": "CPUExecutionProvider"}


def test_trt_engine_has_the_protocol_shape():
    for member in ("run", "device_io"):
        assert callable(getattr(trt_backend.TrtEngine, member))
    assert list(inspect.signature(trt_backend.TrtEngine.run).parameters) == ["self", "feeds"]
    assert trt_backend.TrtEngine.supports_device_io is True


def test_unknown_backend_is_refused_in_one_line(lseg_bundle, tmp_path):
    with pytest.raises(UnknownBackendError, match=r"unknown provider 'gpu'; choose one of \['ort-cpu', 'ort-cuda', "
                                                  r"'ort-trt', 'trt'\]") as e:
        Bundle(lseg_bundle, provider="gpu")
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    folder = tmp_path / "b"
    shutil.copytree(lseg_bundle, folder)
    man = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(man, backend="openvino")))
    with pytest.raises(BundleError, match="names backend 'openvino'; this runtime knows") as e:
        Bundle(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("old, new", [("cpu", "ort-cpu"), ("cuda", "ort-cuda"), ("tensorrt", "ort-trt")])
def test_old_provider_spellings_still_work_and_warn(lseg_bundle, old, new):
    with pytest.warns(BackendNameWarning, match=f"provider name '{old}' is deprecated, use '{new}'"):
        b = Bundle(lseg_bundle, provider=old)
    assert b.provider == new
    if new == "ort-cpu":
        assert b.run("lseg_encoder", {"image": np.zeros((1, 3, 96, 96), np.float32)})["pixel_embeds"].shape[1] == 128


def test_old_build_spelling_and_old_manifests(lseg_bundle):
    from edgeseg.export.build.builder import default_out

    with pytest.deprecated_call(match="backend name 'tensorrt' is deprecated, use 'trt'"):
        assert resolve_backend("tensorrt", "build") == "trt"
    with pytest.warns(BackendNameWarning):
        assert default_out(lseg_bundle, "fp16", "tensorrt").name == f"{lseg_bundle.name}_fp16_trt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # new names and stored manifests never warn
        assert [resolve_backend(n) for n in BACKENDS] == list(BACKENDS) == ["ort-cpu", "ort-cuda", "ort-trt", "trt"]
        assert manifest_backend("tensorrt") == "trt" and manifest_backend("ort-trt") == "ort-trt"
        man = json.loads((lseg_bundle / "manifest.json").read_text())
        assert Manifest.from_dict(dict(man, backend="tensorrt")).backend == "trt"
        assert Manifest.from_dict(man).backend == "ort-cpu"


def test_cli_takes_the_new_names_and_the_old_ones():
    from edgeseg.cli import build_parser

    p = build_parser()
    for name in ("ort-cpu", "ort-cuda", "ort-trt", "trt", "cpu", "cuda", "tensorrt"):
        assert p.parse_args(["segment", "x.png", "--labels", "a", "--provider", name]).provider == name
    assert p.parse_args(["build", "b", "--backend", "tensorrt"]).backend == "tensorrt"
    with pytest.raises(SystemExit):
        p.parse_args(["build", "b", "--backend", "cpu"])  # "cpu" was never a build backend name


# --- the native TensorRT engine through the Session interface, on fakes of tensorrt and cuda-python ---

def _fake_tensorrt_and_cudart() -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """Host memory stands in for device memory; the fake engine computes pixel_embeds = 2 * mean(image)."""
    mem: dict[int, np.ndarray] = {}

    def malloc(n):
        buf = np.zeros(n, np.uint8)
        mem[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def memcpy(dst, src, n, kind, stream):
        ctypes.memmove(int(dst), int(src), n)
        return (0,)

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes[name] if name == "image" else (self.shapes["image"][0], 128, 48, 48)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            shape = self.shapes["image"]
            x = np.ctypeslib.as_array(ctypes.cast(self.addr["image"], ctypes.POINTER(ctypes.c_float)), shape)
            y = np.ctypeslib.as_array(ctypes.cast(self.addr["pixel_embeds"], ctypes.POINTER(ctypes.c_float)),
                                      self.get_tensor_shape("pixel_embeds"))
            y[...] = 2 * x.mean(axis=(1, 2, 3))[:, None, None, None]
            return True

    engine = types.SimpleNamespace(num_io_tensors=2, get_tensor_name=["image", "pixel_embeds"].__getitem__,
                                   get_tensor_mode=lambda n: "in" if n == "image" else "out",
                                   get_tensor_dtype=lambda n: "float32", create_execution_context=Context)
    class Logger:
        WARNING = 0

        def __init__(self, level):
            self.level = level

    trt = types.SimpleNamespace(__version__="10.3.0", Logger=Logger, nptype=np.dtype,
                                TensorIOMode=types.SimpleNamespace(INPUT="in"),
                                Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda b: engine))
    prop = types.SimpleNamespace(name=b"FakeGPU", major=8, minor=7)
    cudart = types.SimpleNamespace(
        cudaGetDevice=lambda: (0, 0), cudaGetDeviceProperties=lambda d: (0, prop), cudaStreamCreate=lambda: (0, 1),
        cudaMalloc=malloc, cudaFree=lambda p: mem.pop(int(p), None), cudaMemcpyAsync=memcpy,
        cudaStreamSynchronize=lambda s: (0,),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2))
    return trt, cudart


def test_trt_engine_runs_through_the_session_interface(lseg_bundle, tmp_path, monkeypatch):
    trt, cudart = _fake_tensorrt_and_cudart()
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    folder = tmp_path / "b"
    shutil.copytree(lseg_bundle, folder)
    man = json.loads((folder / "manifest.json").read_text())
    man["backend"] = "tensorrt"  # an older build's manifest: native engines
    for name, comp in man["components"].items():
        (folder / f"{name}.plan").write_bytes(b"plan")
        comp["engine"] = {"file": f"{name}.plan", "sha256": hashlib.sha256(b"plan").hexdigest(),
                          "tensorrt": "10.3.0", "compute_capability": "8.7", "gpu": "FakeGPU"}
    (folder / "manifest.json").write_text(json.dumps(man))
    b = Bundle(folder)
    assert b.provider == "trt"
    sess = b.session("lseg_encoder")
    assert isinstance(sess, trt_backend.TrtEngine) and isinstance(sess, Session)
    assert sess.spec == b.spec("lseg_encoder") and sess.provider == "TensorRT 10.3.0" and sess.supports_device_io
    assert set(sess.device_io().buffers) == {"image", "pixel_embeds"}
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    out = b.run("lseg_encoder", {"image": x})
    assert list(out) == ["pixel_embeds"] and out["pixel_embeds"].shape == (2, 128, 48, 48)
    np.testing.assert_allclose(out["pixel_embeds"][:, 0, 0, 0], 2 * x.mean(axis=(1, 2, 3)), rtol=1e-5)
    assert b.providers_used == {"lseg_encoder": "TensorRT 10.3.0"}
    with pytest.raises(BundleError, match="engine .* has I/O .* the manifest"):
        b.session("lseg_head")  # the fake engine has the encoder's I/O: refused by name
