"""Bundle trust checks: hashes, manifest format, I/O names, providers; every failure names the fix."""

import json
import shutil

import numpy as np
import pytest

from edgeseg.runtime.bundle import Bundle, BundleError


@pytest.fixture()
def bundle_copy(lseg_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(lseg_bundle, dst)
    return dst


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_manifest_describes_components(lseg_bundle):
    b = Bundle(lseg_bundle)
    m = b.manifest
    assert set(m["components"]) == {"clip_text", "lseg_encoder", "lseg_head"}
    assert m["source"]["weights_sha256"] and m["versions"]["onnxruntime"] and m["tokenizer"]["file"] == "tokenizer.json"
    enc = m["components"]["lseg_encoder"]
    assert enc["inputs"][0]["name"] == "image" and enc["inputs"][0]["min"][0] == 1 and enc["opset"] >= 17
    out = b.run("lseg_encoder", {"image": np.zeros((2, 3, 96, 96), np.float32)})["pixel_embeds"]
    assert out.shape == (2, 128, 48, 48)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert b.providers_used == {"lseg_encoder": "CPUExecutionProvider"}


def test_corrupt_component_is_refused(bundle_copy):
    with open(bundle_copy / "lseg_head.onnx", "ab") as f:
        f.write(b"junk")
    with pytest.raises(BundleError, match=r"lseg_head.*sha256.*re-export"):
        Bundle(bundle_copy)


def test_unloadable_onnx_gives_clear_error(bundle_copy):
    (bundle_copy / "lseg_head.onnx").write_bytes(b"not an onnx file")
    _edit_manifest(bundle_copy, lambda m: m["components"]["lseg_head"].update(
        sha256=__import__("hashlib").sha256(b"not an onnx file").hexdigest()))
    b = Bundle(bundle_copy)
    with pytest.raises(BundleError, match="onnxruntime cannot load lseg_head.onnx"):
        b.session("lseg_head")


def test_missing_pieces(bundle_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Bundle(tmp_path / "nope")
    (bundle_copy / "clip_text.onnx").unlink()
    with pytest.raises(BundleError, match="clip_text.*missing"):
        Bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle(bundle_copy)


def test_bad_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps({"format": "other", "format_version": 9}))
    with pytest.raises(BundleError, match="this runtime reads 'edgeseg-bundle' v1"):
        Bundle(bundle_copy)


def test_manifest_io_names_must_match_the_model(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["components"]["lseg_encoder"]["outputs"][0].update(name="feats"))
    b = Bundle(bundle_copy)
    with pytest.raises(BundleError, match="differ from the manifest"):
        b.session("lseg_encoder")


def test_inputs_checked_before_running(lseg_bundle):
    b = Bundle(lseg_bundle)
    with pytest.raises(ValueError, match="needs input 'image'"):
        b.run("lseg_encoder", {"img": np.zeros((1, 3, 96, 96), np.float32)})
    with pytest.raises(ValueError, match="expected float32"):
        b.run("lseg_encoder", {"image": np.zeros((1, 3, 96, 96), np.float64)})
    with pytest.raises(BundleError, match="has no component 'sam_decoder'"):
        b.run("sam_decoder", {})


def test_provider_is_never_swapped_silently(lseg_bundle):
    import onnxruntime as ort

    with pytest.raises(ValueError, match="unknown provider 'gpu'"):
        Bundle(lseg_bundle, provider="gpu")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the unavailable-provider error cannot be provoked")
    b = Bundle(lseg_bundle, provider="ort-cuda")
    with pytest.raises(RuntimeError, match=r"'ort-cuda'.*not available.*onnxruntime-gpu"):
        b.session("lseg_head")
