"""clip_masked at full size under the released preset: every branch fed N proposals (bundles exported before
stop 21, whose branches share one proposal axis) vs the released preset's feeds (the native branch N; the
resized soft branch and the squashed crops, whose outputs it does not read, one each), alternating, one process.

    python benchmarks/refdiff_full_export.py --config full-vit-b --only clip_masked --export-only clip_masked \
        --keep /tmp/clipfull --out /tmp/clipfull/export.json
    python benchmarks/clip_masked_feeds.py /tmp/clipfull/clip_masked.onnx [--n 10] [--size 512] \
        [--out benchmarks/results/clip-masked-released-feeds.json]

Random weights and inputs (the cost does not depend on them); ONNX Runtime CPU defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a clip_masked.onnx exported since stop 21 (proposal axes named apart)")
    ap.add_argument("--n", type=int, default=10, help="proposals (Ref-Diff keeps the 10 largest SAM masks)")
    ap.add_argument("--size", type=int, default=512, help="native image side (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/clip-masked-released-feeds.json")
    a = ap.parse_args(argv)
    if not Path(a.model).is_file():
        ap.error(f"{a.model} is not a file: export it first (the refdiff_full_export.py command in this "
                 f"script's docstring)")

    import onnxruntime as ort

    from edgeseg.runtime.fileio import atomic_write_bytes

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    if shapes["crops"][0] == shapes["patch_masks"][0]:
        raise SystemExit(f"{a.model}: its branches share one proposal axis ({shapes['crops'][0]!r}); export it "
                         f"with this version")
    size, grid = shapes["image"][2:], [a.size // (shapes["image"][2] // shapes["patch_masks"][1])] * 2
    rng = np.random.default_rng(0)

    def feeds(k: int) -> dict[str, np.ndarray]:
        return {"image": rng.standard_normal((1, 3, *size)).astype(np.float32),
                "patch_masks": (rng.random((k, *shapes["patch_masks"][1:])) > 0.5).astype(np.float32),
                "crops": rng.standard_normal((k, 3, *size)).astype(np.float32)}

    native = {"native_image": rng.standard_normal((1, 3, a.size, a.size)).astype(np.float32),
              "native_masks": (rng.random((a.n, *grid)) > 0.5).astype(np.float32)}
    wide, lean = dict(feeds(a.n), **native), dict(feeds(1), **native)
    sess.run(None, wide), sess.run(None, lean)  # warm-up
    times: dict[str, list[float]] = {"every_branch_n": [], "released_feeds": []}
    diff = 0.0
    for _ in range(a.repeats):
        ref = None
        for key, f in (("every_branch_n", wide), ("released_feeds", lean)):
            t = time.perf_counter()
            out = sess.run(["native_embeds"], f)[0]
            times[key].append(time.perf_counter() - t)
            ref = out if ref is None else ref
            diff = max(diff, float(np.abs(out - ref).max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"command": "python benchmarks/clip_masked_feeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": "clip_masked, ViT-B/16 (full-vit-b), random weights", "proposals": a.n,
           "native_image": [a.size, a.size], "clip_input": list(size), "machine": platform.platform(),
           "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "median_s": {k: round(v, 2) for k, v in med.items()},
           "speedup": round(med["every_branch_n"] / med["released_feeds"], 2),
           "native_embeds_max_abs_diff": diff,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(Path(a.out), (json.dumps(doc, indent=1) + "\n").encode())
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
