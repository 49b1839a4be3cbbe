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
