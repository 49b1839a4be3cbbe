"""ONNX vs PyTorch parity, parametrized over the component registry (tiny ToyWorld checkpoints), plus the
full-size ViT-B/16 CLIP with random weights."""

import onnx
import pytest

from edgeseg.export.bundle import COMPONENTS, export_bundle
from edgeseg.export.verify import verify_bundle
from conftest import PARITY_BUNDLE

ATOL = 1e-4


@pytest.fixture(scope="module")
def rows(request):
    methods = sorted(set(PARITY_BUNDLE.values()))
    return [r for m in methods for r in verify_bundle(request.getfixturevalue(f"{m}_bundle"))]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_component_matches_pytorch(rows, component):
    mine = [r for r in rows if r.component == component]
    assert mine, f"no bundle exported {component}"
    bound = min(3, max(r.shape[0] for r in mine))  # a component whose profile stops at 2 runs at 1 and 2
    assert {r.shape[0] for r in mine} == {1, bound} and bound >= 2, "parity must cover more than one batch size"
    for r in mine:
        assert r.max_abs < ATOL and r.cosine > 0.99999, r


def test_exported_graphs_are_valid_and_dynamic(lseg_bundle):
    m = onnx.load(str(lseg_bundle / "lseg_head.onnx"))
    onnx.checker.check_model(m)
    dims = [d.dim_param or d.dim_value for d in m.graph.input[1].type.tensor_type.shape.dim]
    assert dims[0] == "labels"
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17


def test_export_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(FileNotFoundError):
        export_bundle("lseg", tmp_path / "no_checkpoint", tmp_path / "out")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown method 'sam'"):
        export_bundle("sam", "lseg_toy", tmp_path / "out")


@pytest.mark.slow
def test_vit_b16_full_size_export_parity(tmp_path):
    """Full-size CLIP ViT-B/16 (random init): both towers export and match PyTorch."""
    b = export_bundle("clip", "ViT-B-16", tmp_path / "vitb16", progress=False)
    for r in verify_bundle(b, batches=(1, 2)):
        assert r.max_abs < 1e-3 and r.cosine > 0.9999, r
