"""Peak memory of one backend running one component, measured in a fresh process.

The peak only grows, so each backend gets its own subprocess: ``baseline_rss_mb`` is the peak after the
imports the backend needs (numpy + onnxruntime, or torch + open_clip), ``peak_rss_mb`` the peak after
loading the model and running it; ``rss_delta_mb`` is what loading and running added. On CUDA,
``device_mb`` is PyTorch's peak allocation (torch backends) or the drop in free device memory (others).

    python -m edgeseg.export.bench.memory '{"engine": "ort", ...}'   # prints one JSON line

:func:`run_cli_peak` runs a whole ``edgeseg`` command the same way (a fresh interpreter, its ``ru_maxrss``), for
the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak resident set of this process in MB: VmHWM (per address space, so it starts afresh at exec;
    ``ru_maxrss`` would carry over the parent's peak on Linux), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; macOS: bytes (rough)


def measure_memory(runner, backend, feeds: dict[str, np.ndarray], threads: int, iters: int = 3) -> dict:
    """Run ``backend`` on ``feeds`` in a subprocess; returns the memory facts (or {"error": ...})."""
    with tempfile.TemporaryDirectory(prefix="edgeseg-mem-") as d:
        feed_file = Path(d) / "feeds.npz"
        np.savez(feed_file, **feeds)
        job = {"backend": backend.name, "engine": backend.engine, "device": backend.device,
               "provider": backend.provider, "threads": threads, "iters": iters,
               "component": runner.component, "method": runner.method, "checkpoint": runner.ckpt,
               "bundle": None if backend.engine == "torch" else str(runner.bundle_dir(backend)),
               "feeds": str(feed_file)}
        r = subprocess.run([sys.executable, "-m", "edgeseg.export.bench.memory", json.dumps(job)],
                           capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"memory worker exited {r.returncode}: {tail}"}
    return json.loads(lines[-1])


PEAK_MARKER = "@@peak_rss_mb "  # the line _CLI_PEAK prints last: "@@peak_rss_mb <MB>"
_CLI_PEAK = """import resource, sys
sys.argv = sys.argv[1:]
try:
    from edgeseg.cli import main
    main()
    code = 0
except SystemExit as e:
    code = e.code
print("@@peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


@dataclass
class CliRun:
    """One ``edgeseg`` command run by :func:`run_cli_peak`: exit status, captured output, wall seconds and the
    child's peak resident memory in MB (``ru_maxrss``; None when it printed no peak line)."""

    rc: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float | None


def run_cli_peak(args: Sequence[str]) -> CliRun:
    """``edgeseg ARGS`` (``args`` without the leading ``edgeseg``) in a fresh interpreter, waited for; its peak
    RSS is the last ``@@peak_rss_mb MB`` line the wrapper prints to stdout after the command exits."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CLI_PEAK, "edgeseg", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    peaks = [line[len(PEAK_MARKER):] for line in proc.stdout.splitlines() if line.startswith(PEAK_MARKER)]
    return CliRun(proc.returncode, proc.stdout, proc.stderr, seconds, float(peaks[-1]) if peaks else None)


def _worker(job: dict) -> dict:
    feeds = dict(np.load(job["feeds"]))
    cuda = job["device"] == "cuda"
    if job["engine"] == "torch":
        import torch

        from edgeseg.export.bench.components import BACKENDS, torch_forward
        from edgeseg.export.bundle import build_components

        backend = BACKENDS[job["backend"]]
        base = _rss_mb()
        wrapper, spec = build_components(job["method"], job["checkpoint"])[0][job["component"]]
        forward = torch_forward(wrapper, spec, backend, job["threads"])
        for _ in range(job["iters"]):
            forward(feeds)
        out = {"baseline_rss_mb": base, "peak_rss_mb": _rss_mb()}
        if cuda:
            torch.cuda.synchronize()
            out["device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        free0 = None
        if cuda:
            import torch  # only to read free device memory; loads the CUDA libraries onnxruntime-gpu needs

            free0 = torch.cuda.mem_get_info()[0]
        from edgeseg.runtime.bundle import Bundle

        base = _rss_mb()
        bundle = Bundle(job["bundle"], provider=job["provider"], threads=job["threads"])
        for _ in range(job["iters"]):
            bundle.run(job["component"], feeds)
        out = {"baseline_rss_mb": base, "peak_rss_mb": _rss_mb()}
        if free0 is not None:
            import torch

            out["device_mb"] = (free0 - torch.cuda.mem_get_info()[0]) / 2**20
    out["rss_delta_mb"] = out["peak_rss_mb"] - out["baseline_rss_mb"]
    return out


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
