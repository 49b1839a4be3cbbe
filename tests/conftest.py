"""Shared fixtures: bundles exported once per session from the committed ToyWorld checkpoints."""

from __future__ import annotations

import pytest

# Which bundle the registry-parametrized parity tests check each component in (method -> fixture
# "<method>_bundle"). A new component adds one line here and a "<method>_bundle" fixture below.
PARITY_BUNDLE = {
    "clip_text": "lseg",
    "clip_image": "clip",
    "lseg_encoder": "lseg",
    "lseg_head": "lseg",
    "ifseg_encoder": "ifseg",
    "ifseg_head": "ifseg",
    "tcl_encoder": "tcl",
    "tcl_head": "tcl",
}


@pytest.fixture(scope="session")
def lseg_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("lseg", "lseg_toy", tmp_path_factory.mktemp("engines") / "lseg_toy", progress=False)


@pytest.fixture(scope="session")
def clip_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("clip", "clip_toy", tmp_path_factory.mktemp("engines") / "clip_toy", progress=False)


@pytest.fixture(scope="session")
def ifseg_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("ifseg", "ifseg_toy", tmp_path_factory.mktemp("engines") / "ifseg_toy", progress=False)


@pytest.fixture(scope="session")
def tcl_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("tcl", "tcl_toy", tmp_path_factory.mktemp("engines") / "tcl_toy", progress=False)


@pytest.fixture()
def text_cache(tmp_path):
    return tmp_path / "text-cache"


@pytest.fixture(scope="session")
def built(request):
    """FP16 / INT8 builds of the exported bundles, built once: built[("lseg", "int8")] -> folder."""
    from edgeseg.export.build import build_bundle

    cache = {}

    def get(method: str, precision: str):
        if (method, precision) not in cache:
            src = request.getfixturevalue(f"{method}_bundle")
            cache[method, precision] = build_bundle(src, precision, progress=False)
        return cache[method, precision]

    return get
