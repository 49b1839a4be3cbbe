"""Full-size Ref-Diff FP16 / INT8 builds (random weights, ``full-vit-b``), out of CI: export once, then
``edgeseg build --precision fp16|int8`` with the pipeline-recorded calibration, each in its own process with its
peak resident memory and wall time, and the lint summary the build writes into its manifest.

    python benchmarks/refdiff_full_builds.py [--work /data/edgeseg-full] [--calib-n 2]
        [--out benchmarks/results/refdiff-full-builds.json]

Needs ~30 GB of disk; the FP16 build converts the 3.4 GB UNet tensor by tensor (``precision._convert_streaming``).
Measured by hand on 2 shared cores / 24 GB (benchmarks/results/refdiff-full-builds.json, written from
``/usr/bin/time -v``): export 24:44, 12.2 GB peak; FP16 build 23:39, 8.3 GB peak (the TensorRT lint loads each
converted graph whole), 4.8 GB -> 2.4 GB, lint clean for TensorRT 10.3 and 11. INT8 (stop 22, ``--calib-n 2``,
chunked calibration of the UNet, VAE and SAM encoders): 46:29, 18.0 GB peak, 4.8 GB -> 1.7 GB, lint clean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeseg.export.bench.memory import run_cli_peak


def run(args: list[str]) -> dict:
    """``edgeseg ARGS`` in a fresh interpreter: {"command", "rc", "seconds", "peak_rss_mb", "tail"}."""
    r = run_cli_peak(args)
    return {"command": "edgeseg " + " ".join(args), "rc": r.rc, "seconds": round(r.seconds, 1),
            "peak_rss_mb": r.peak_rss_mb, "tail": (r.stderr or r.stdout)[-600:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/edgeseg-full")
    ap.add_argument("--calib-n", type=int, default=2, help="calibration photos (~4 min each through the FP32 "
                    "pipeline at full size on 2 cores)")
    ap.add_argument("--out", default="benchmarks/results/refdiff-full-builds.json")
    a = ap.parse_args()
    src = Path(a.work) / "refdiff_full"
    steps = [] if (src / "manifest.json").is_file() else [run(["export", "refdiff", "full-vit-b", "--out", str(src)])]
    for p in ("fp16", "int8"):
        steps.append(run(["build", str(src), "--precision", p, "--out", f"{src}_{p}", "--calib-n", str(a.calib_n)]))
        man = Path(f"{src}_{p}") / "manifest.json"
        steps[-1]["lint"] = json.loads(man.read_text())["build"]["lint"] if man.is_file() else None
        print(json.dumps({k: v for k, v in steps[-1].items() if k != "tail"}), flush=True)
    Path(a.out).write_text(json.dumps({"config": "full-vit-b", "calib_n": a.calib_n, "steps": steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()
