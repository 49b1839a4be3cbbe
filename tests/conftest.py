"""Shared fixtures: bundles exported once per session from the committed ToyWorld checkpoints."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lseg_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("lseg", "lseg_toy", tmp_path_factory.mktemp("engines") / "lseg_toy", progress=False)


@pytest.fixture(scope="session")
def clip_bundle(tmp_path_factory):
    from edgeseg.export.bundle import export_bundle

    return export_bundle("clip", "clip_toy", tmp_path_factory.mktemp("engines") / "clip_toy", progress=False)


@pytest.fixture()
def text_cache(tmp_path):
    return tmp_path / "text-cache"


@pytest.fixture(scope="session")
def built(lseg_bundle, clip_bundle):
    """FP16 / INT8 builds of the exported bundles, built once: built[("lseg", "int8")] -> folder."""
    from edgeseg.export.build import build_bundle

    cache = {}

    def get(method: str, precision: str):
        if (method, precision) not in cache:
            src = {"lseg": lseg_bundle, "clip": clip_bundle}[method]
            cache[method, precision] = build_bundle(src, precision, progress=False)
        return cache[method, precision]

    return get
