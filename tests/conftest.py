"""Shared fixtures: bundles exported once per session from the committed ToyWorld checkpoints."""

from __future__ import annotations

import pytest

from edgeseg.methods import METHODS

# Which bundle the registry-parametrized parity tests check each component in: the first method of the one
# registry (edgeseg.methods.METHODS) that lists it. A new method or component needs no line here.
PARITY_BUNDLE: dict[str, str] = {}
for _spec in METHODS.values():
    for _component in _spec.components:
        PARITY_BUNDLE.setdefault(_component, _spec.name)

# Methods whose FP16 / INT8 builds the precision tests hold to the fidelity bars (registry: precision_suite).
PRECISION_METHODS = tuple(m.name for m in METHODS.values() if m.precision_suite)


def _bundle_fixture(method: str, checkpoint: str):
    """A session fixture exporting the committed ``checkpoint`` as a ``method`` bundle once."""

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory):
        from edgeseg.export.bundle import export_bundle

        return export_bundle(method, checkpoint, tmp_path_factory.mktemp("engines") / checkpoint, progress=False)

    return fixture


# One session fixture "<method>_bundle" per registered method, exporting its test checkpoint.
for _spec in METHODS.values():
    globals()[f"{_spec.name}_bundle"] = _bundle_fixture(_spec.name, _spec.test_checkpoint)


@pytest.fixture()
def text_cache(tmp_path):
    return tmp_path / "text-cache"


@pytest.fixture(scope="session")
def built(request):
    """FP16 / INT8 builds of the exported bundles, built once: built[("lseg", "int8")] -> folder."""
    from edgeseg.export.build.builder import build_bundle

    cache = {}

    def get(method: str, precision: str):
        if (method, precision) not in cache:
            src = request.getfixturevalue(f"{method}_bundle")
            cache[method, precision] = build_bundle(src, precision, progress=False)
        return cache[method, precision]

    return get
