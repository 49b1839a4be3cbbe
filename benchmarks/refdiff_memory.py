"""Peak resident memory of Ref-Diff under ONNX Runtime CPU, per component and for the whole ``edgeseg refer``,
per memory profile (``runtime/session.py``: ``speed`` = ONNX Runtime's defaults, ``low`` = no CPU arena and no
memory patterns, the default).

    python benchmarks/refdiff_memory.py --bundle /work/full/refdiff_full_vitb [--profiles low speed]
        [--size 512] [--preset paper] [--skip-refer] [--out benchmarks/results/refdiff-memory-cpu.json]

Every measurement runs in a fresh interpreter (peak RSS = ``ru_maxrss`` of that process): one per component
(session load + one run on the shapes the pipeline feeds it at ``--size``: batch 2 for the text encoder and
UNet, the automatic-mask point batch for the SAM decoder, top_k proposals for clip_masked, one crop for
clip_hard), then ``edgeseg refer`` on ``skimage.data.astronaut()`` resized to ``--size``. The goal (issue 15):
whole-refer peak <= 1.5 x the bundle's weight bytes. Out of CI (a full-size bundle is 4.9 GB); run it by hand
on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeseg.export.bench.memory import run_cli_peak

WORKER = r"""
import json, resource, sys, time
import numpy as np
from edgeseg.runtime import Bundle
path, name, profile, prompts, proposals = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
base = rss_mb()
b = Bundle(path, memory=profile, check_hashes=False)
spec = b.spec(name)
batch = {"sd_text": 2, "unet_attn": 2, "clip_text": 1, "sam_decoder": prompts, "clip_masked": proposals,
         "clip_hard": 1}.get(name, 1)  # clip_hard: one call per crop size (crops rarely share one)
rng = np.random.default_rng(0)
feeds = {}
for t in spec.inputs:
    shape = [d if isinstance(d, int) else (batch if i == 0 else t.opt[i]) for i, d in enumerate(t.shape)]
    if t.min:
        shape = [min(max(n, lo), hi) for n, lo, hi in zip(shape, t.min, t.max)]
    x = rng.integers(0, 49407, shape) if t.dtype == "int64" else rng.standard_normal(shape)
    feeds[t.name] = x.astype(t.dtype)
t0 = time.perf_counter(); b.session(name); t1 = time.perf_counter()
loaded = rss_mb()
b.run(name, feeds); t2 = time.perf_counter()
ran = rss_mb()
print("@@" + json.dumps({"component": name, "profile": profile, "weights_MB": round(b.weight_bytes(name) / 2**20, 1),
      "memory": b.memory_used()[name], "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
      "rss_base_MB": round(base), "rss_after_load_MB": round(loaded), "rss_after_run_MB": round(ran),
      "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      "load_s": round(t1 - t0, 1), "run_s": round(t2 - t1, 1)}))
"""

def _last(marker: str, text: str) -> str | None:
    lines = [line[len(marker):] for line in text.splitlines() if line.startswith(marker)]
    return lines[-1] if lines else None


def component_row(bundle: Path, name: str, profile: str, prompts: int, proposals: int) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WORKER, str(bundle), name, profile, str(prompts), str(proposals)],
                          capture_output=True, text=True)
    row = _last("@@", proc.stdout)
    if proc.returncode or row is None:
        return {"component": name, "profile": profile, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return dict(json.loads(row), wall_s=round(time.perf_counter() - t, 1))


def refer_row(bundle: Path, image: Path, profile: str, preset: str, expression: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["refer", str(image), expression, "--bundle", str(bundle), "--out", f"{tmp}/refer.png",
                "--memory", profile, "--preset", preset, "--cache-dir", f"{tmp}/cache"]
        run = run_cli_peak(args)
    result = next((json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")), None)
    progress = [line for line in run.stderr.splitlines() if line.startswith("[refdiff]")]
    return {"profile": profile, "command": " ".join(["edgeseg", *args]), "rc": run.rc, "wall_s": round(run.seconds, 1),
            "peak_rss_MB": round(run.peak_rss_mb) if run.peak_rss_mb is not None else None,
            "timings_ms": result["timings_ms"] if result else None, "progress": progress,
            **({"tail": run.stderr[-600:]} if run.rc else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--profiles", nargs="+", default=["low"], choices=["low", "speed"])
    ap.add_argument("--only", nargs="*", help="components (default: all)")
    ap.add_argument("--size", type=int, default=512, help="square test image side for edgeseg refer")
    ap.add_argument("--preset", default="released", choices=["released", "paper"])
    ap.add_argument("--expression", default="the woman on the left")
    ap.add_argument("--skip-refer", action="store_true")
    ap.add_argument("--skip-components", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/refdiff-memory-cpu.json")
    a = ap.parse_args()
    man = json.loads((a.bundle / "manifest.json").read_text())
    weights = sum(f.stat().st_size for f in a.bundle.iterdir() if f.suffix in (".onnx", ".data"))
    amg = man["method_config"]["amg"]
    rows, refer = [], []
    if not a.skip_components:
        for profile in a.profiles:
            for name in a.only or list(man["components"]):
                rows.append(component_row(a.bundle, name, profile, int(amg["batch"]), int(amg["top_k"])))
                print(json.dumps(rows[-1]), flush=True)
    if not a.skip_refer:
        import numpy as np
        from PIL import Image
        from skimage import data

        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "astronaut.png"
            Image.fromarray(np.asarray(data.astronaut())).resize((a.size, a.size), Image.BILINEAR).save(image)
            for profile in a.profiles:
                refer.append(dict(refer_row(a.bundle, image, profile, a.preset, a.expression),
                                  weights_MB=round(weights / 2**20, 1)))
                peak = refer[-1]["peak_rss_MB"]
                refer[-1]["ratio_to_weights"] = round(peak * 2**20 / weights, 2) if peak else None
                print(json.dumps({k: v for k, v in refer[-1].items() if k != "progress"}), flush=True)
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    doc = {"command": "python benchmarks/refdiff_memory.py " + " ".join(sys.argv[1:]), "bundle": str(a.bundle),
           "precision": man.get("precision", "fp32"), "weights_MB": round(weights / 2**20, 1),
           "goal": "whole-refer peak RSS <= 1.5 x weights", "image": f"skimage.data.astronaut() at {a.size} px",
           "preset": a.preset, "machine": platform.platform(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "components": rows or old.get("components", []), "refer": refer or old.get("refer", [])}
    from edgeseg.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
