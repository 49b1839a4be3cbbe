"""Fixtures of the serving tests: ToyWorld images, in-process reference predictors, and one Triton server
(PyTriton's ``tritonserver``) serving the four toy bundles for the whole session. Everything binds to 127.0.0.1
and stops by itself; the tests skip (with the reason) where ``nvidia-pytriton`` / ``tritonclient`` are missing."""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_support import MISSING, free_ports  # noqa: E402

@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """16 ToyWorld scenes (96 x 96 x 3 uint8), a few of another size."""
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld("seen", 11)
    out = [world[i].image for i in range(14)]
    out += [ToyWorld("seen", 12, ToyWorldConfig(size=size))[0].image for size in (64, 128)]
    return out


@pytest.fixture(scope="session")
def bundles(lseg_bundle, tcl_bundle, ifseg_bundle, refdiff_bundle) -> dict[str, str]:
    return {"lseg": str(lseg_bundle), "tcl": str(tcl_bundle), "ifseg": str(ifseg_bundle),
            "refdiff": str(refdiff_bundle)}


@pytest.fixture(scope="session")
def server(bundles, tmp_path_factory):
    """One server for the session: models lseg, tcl, ifseg, refdiff (named after the methods), 1 instance each,
    dynamic batching (max batch 8, 5 ms), the text cache in a temporary folder."""
    if MISSING:
        pytest.skip(f"{MISSING} not installed (pip install 'edgeseg[serve]')")
    from edgeseg.serve import Batching, ModelOptions, Ports, serving

    options = ModelOptions(cache_dir=str(tmp_path_factory.mktemp("serve-cache")))
    names = list(bundles)
    with serving([bundles[n] for n in names], names, Ports(*free_ports()), instances=1,
                 batching=Batching(8, 5000), options=options, exit_timeout_s=2) as (srv, served):
        yield srv


@pytest.fixture()
def http(server):
    import tritonclient.http as httpclient

    with closing(httpclient.InferenceServerClient(server.http_url, network_timeout=120,
                                                  connection_timeout=30)) as c:
        yield c


@pytest.fixture()
def grpc(server):
    import tritonclient.grpc as grpcclient

    with closing(grpcclient.InferenceServerClient(server.grpc_url)) as c:
        yield c


@pytest.fixture(scope="session")
def predictors(bundles):
    """In-process runtime predictors, the reference every served result must equal."""
    from edgeseg.runtime import RefDiffPredictor, load_predictor

    out = {m: load_predictor(bundles[m], cache_dir=None) for m in ("lseg", "tcl", "ifseg")}
    out["refdiff"] = RefDiffPredictor(bundles["refdiff"], cache_dir=None)
    return out
