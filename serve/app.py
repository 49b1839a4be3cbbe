"""``edgeseg serve``: bundles -> a Triton model repository (one Python-backend model each) -> a running server.

    with serving(["engines/lseg_toy", "engines/refdiff_toy"], ports=Ports(8000, 8001, 8002)) as (server, models):
        ...  # KServe v2 on http://127.0.0.1:8000/v2/models/lseg_toy/infer and gRPC 127.0.0.1:8001

:func:`run_forever` is the CLI: it prints the endpoints, serves until SIGINT / SIGTERM (or the server dies) and
stops cleanly (no process left).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from .config import Batching
from .repository import ModelOptions, ServedBundle, resolve_bundles, write_serve_repository
from .server import Ports, ServeError, TritonServer, check_platform, distribution


def default_threads(instances: int) -> int | None:
    """ONNX Runtime intra-op threads per instance: the cores shared out (None, ORT's default, for one instance)."""
    return None if instances <= 1 else max(1, (os.cpu_count() or 1) // instances)


@contextlib.contextmanager
def serving(paths: Sequence[str | Path], names: Sequence[str] | None = None, ports: Ports = Ports(),
            host: str = "127.0.0.1", instances: int = 1, batching: Batching = Batching(),
            options: ModelOptions | None = None, exit_timeout_s: int = 10, timeout_s: float = 180.0,
            workdir: str | Path | None = None) -> Iterator[tuple[TritonServer, list[ServedBundle]]]:
    """Serve the bundles until the block ends (then stop the server and remove its temporary files)."""
    check_platform()
    distribution()
    if instances < 1:
        raise ValueError(f"--instances {instances}: give at least 1")
    options = options or ModelOptions(threads=default_threads(instances))
    served = resolve_bundles(paths, names, options.provider)
    root = Path(tempfile.mkdtemp(prefix="edgeseg-serve-", dir=workdir))
    server = None
    try:
        write_serve_repository(served, root / "models", batching, instances, options)
        server = TritonServer(root / "models", ports, host, exit_timeout_s, workdir=root)
        server.start(timeout_s)
        yield server, served
    finally:
        if server is not None:
            server.stop()
        if not os.environ.get("EDGESEG_SERVE_KEEP_LOGS"):
            shutil.rmtree(root, ignore_errors=True)


def _banner(server: TritonServer, served: list[ServedBundle], instances: int, batching: Batching) -> str:
    lines = [f"edgeseg serve: Triton ready on http://{server.http_url} (KServe v2), grpc {server.grpc_url}, "
             f"metrics {server.metrics_url}"]
    for s in served:
        lines.append(f"  {s.name}: {s.method} ({s.kind}), {instances} instance(s), max batch {batching.max_batch}, "
                     f"dynamic batching {'off' if batching.delay_us is None else f'{batching.delay_us} us'}; "
                     f"POST http://{server.http_url}/v2/models/{s.name}/infer")
    lines.append(f"  ready: GET http://{server.http_url}/v2/health/ready; stop: Ctrl-C or kill -TERM {os.getpid()}")
    lines.append(f"  server log: {server.log_path} (removed at stop unless EDGESEG_SERVE_KEEP_LOGS=1)")
    return "\n".join(lines)


def run_forever(paths: Sequence[str | Path], names: Sequence[str] | None = None, ports: Ports = Ports(),
                host: str = "127.0.0.1", instances: int = 1, batching: Batching = Batching(),
                options: ModelOptions | None = None, exit_timeout_s: int = 10, timeout_s: float = 180.0,
                duration_s: float | None = None) -> None:
    """Serve until SIGINT / SIGTERM (or ``duration_s``); a server that dies on its own is an error."""
    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serving(paths, names, ports, host, instances, batching, options, exit_timeout_s, timeout_s) as (
                server, served):
            print(_banner(server, served, instances, batching), flush=True)
            end = None if duration_s is None else time.monotonic() + duration_s
            while stop["signal"] is None and (end is None or time.monotonic() < end):
                if server.proc is None or server.proc.poll() is not None:
                    raise ServeError(f"tritonserver stopped on its own: {server.failure('it exited')}")
                time.sleep(0.2)
            print("edgeseg serve: stopping", file=sys.stderr, flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print("edgeseg serve: stopped", file=sys.stderr, flush=True)
