"""Full-size FP16 fidelity of the SD UNet's attention maps (issue 15 section 2: correlation >= 0.99), random
weights, out of CI.

    python benchmarks/refdiff_full_fp16_attention.py [--config full-vit-b] [--work /tmp/edgeseg-fp16attn]
        [--timesteps 981 741 501] [--out benchmarks/results/refdiff-full-fp16-attention.json]
    python benchmarks/refdiff_full_fp16_attention.py --fp32 FULL/unet_attn.onnx \
        --other FULL_int8/unet_attn.onnx --label int8 --out benchmarks/results/refdiff-full-int8-attention.json

The second form compares a built graph (the full-size INT8 bundle's UNet) with the FP32 bundle's, no export.

1. ``unet_attn`` of the config (SD 1.5 UNet at the config's image size, 512 px: 64 x 64 latents, with the
   ``attn`` map and the released ``attn_logits``) exported by ``refdiff_full_export.py --keep`` (skipped when the
   work folder already holds it);
2. converted to FP16 with the bundle's recipe (``convert_fp16`` with the spec's ``fp32_outputs``, tensor by
   tensor into one external-data file: what ``edgeseg build --precision fp16`` does to this component);
3. both graphs run in ONNX Runtime CPU, each in its own process (peak RSS per precision), on the pipeline's kind
   of input: one latent (unit normal) at each of ``--timesteps`` with unit-normal text states, batch 1;
4. per output and timestep: Pearson correlation, cosine and max-abs of FP16 against FP32. The FP32 graph is
   the reference: it equals PyTorch to 1.8e-6 max-abs at this size (``refdiff-full-export.json``).

ONNX Runtime's x86 CPU provider computes most FP16 nodes in FP32 after casts, so this checks the conversion
(weights and activations rounded to FP16 where the graph keeps them), not a GPU's FP16 arithmetic.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNNER = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
model, feeds_file, out_file = sys.argv[1:4]
t0 = time.perf_counter()
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
t1 = time.perf_counter()
names = [o.name for o in sess.get_outputs()]
outs, runs = {}, []
with np.load(feeds_file) as z:
    steps = z["timestep"]
    for i, t in enumerate(steps):
        feeds = {"sample": z["sample"], "timestep": np.array([t], np.float32),
                 "encoder_hidden_states": z["encoder_hidden_states"]}
        s = time.perf_counter()
        for n, v in zip(names, sess.run(names, feeds)):
            outs[f"{n}@{int(t)}"] = v
        runs.append(round(time.perf_counter() - s, 1))
np.savez(out_file, **outs)
print(json.dumps({"load_s": round(t1 - t0, 1), "run_s": runs,
                  "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def _stats(a, b) -> dict:
    import numpy as np

    from edgeseg.export.verify import compare

    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float(np.array_equal(x, y))
    max_abs, cos = compare(a, b)
    return {"pearson": corr, "cosine": cos, "max_abs": max_abs, "shape": list(a.shape)}


def _run(model: Path, feeds: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", RUNNER, str(model), str(feeds), str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"running {model.name} failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="full-vit-b")
    ap.add_argument("--work", default="/tmp/edgeseg-fp16attn")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[981, 741, 501])
    ap.add_argument("--bar", type=float, default=0.99, help="correlation bar of the attention maps")
    ap.add_argument("--out", default="benchmarks/results/refdiff-full-fp16-attention.json")
    ap.add_argument("--fp32", default=None, help="an FP32 unet_attn.onnx to use instead of exporting one")
    ap.add_argument("--other", default=None, help="a built unet_attn.onnx to compare instead of converting to FP16")
    ap.add_argument("--label", default="fp16", help="name of the compared graph in the JSON")
    a = ap.parse_args(argv)
    for given in (a.fp32, a.other):
        if given and not Path(given).is_file():
            ap.error(f"{given} is not a file")

    import numpy as np

    from edgeseg.export.build.precision import convert_fp16
    from edgeseg.runtime.fileio import atomic_write_bytes

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = Path(a.fp32) if a.fp32 else work / "unet_attn.onnx"
    fp16 = Path(a.other) if a.other else work / "fp16" / "unet_attn.onnx"
    steps: dict = {}
    if not fp32.is_file():
        t = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).with_name("refdiff_full_export.py")), "--config", a.config,
               "--only", "unet_attn", "--export-only", "unet_attn", "--keep", str(work),
               "--out", str(work / "export.json")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not fp32.is_file():
            raise SystemExit(f"export failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        steps["export"] = dict(json.loads((work / "export.json").read_text())["rows"][0],
                               seconds=round(time.perf_counter() - t, 1))
        print(f"exported unet_attn in {steps['export']['seconds']:.0f} s", file=sys.stderr, flush=True)
    import onnx

    if "export" not in steps and (work / "export.json").is_file():  # exported by an earlier run
        steps["export"] = json.loads((work / "export.json").read_text())["rows"][0]
    graph = onnx.load(str(fp32), load_external_data=False).graph
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in graph.input}
    fp32_outputs = tuple(o.name for o in graph.output if o.name in ("attn", "attn_logits"))
    del graph
    if not fp16.is_file():
        fp16.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        rep = convert_fp16(fp32, fp16, fp32_outputs=fp32_outputs, external=True)
        steps["convert_fp16"] = {"seconds": round(time.perf_counter() - t, 1), "nodes": rep.nodes,
                                 "nodes_fp32": rep.nodes_fp32, "clipped_constants": rep.clipped_constants}
        print(f"converted to FP16 in {steps['convert_fp16']['seconds']:.0f} s", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    feeds = work / "feeds.npz"
    np.savez(feeds, sample=rng.standard_normal([1, *shapes["sample"][1:]]).astype(np.float32),
             encoder_hidden_states=rng.standard_normal([1, *shapes["encoder_hidden_states"][1:]]).astype(np.float32),
             timestep=np.array(a.timesteps, np.float32))
    runs = {}
    for label, model in (("fp32", fp32), (a.label, fp16)):
        runs[label] = _run(model, feeds, work / f"out-{label}.npz")
        print(f"{label}: {runs[label]}", file=sys.stderr, flush=True)
    with np.load(work / "out-fp32.npz") as r32, np.load(work / f"out-{a.label}.npz") as r16:
        rows = {k: _stats(r32[k], r16[k]) for k in r32.files}
    attn = [v["pearson"] for k, v in rows.items() if k.split("@")[0] in fp32_outputs]
    weights = {p.name: p.stat().st_size for p in sorted(fp16.parent.glob(fp16.name + "*"))}
    doc = {"command": "python benchmarks/refdiff_full_fp16_attention.py " + " ".join(argv or sys.argv[1:]),
           "config": a.config, "weights": "random (seeded)", "reference": "the FP32 ONNX graph (ONNX Runtime CPU)",
           "inputs": {"batch": 1, "timesteps": a.timesteps, "sample": shapes["sample"],
                      "encoder_hidden_states": shapes["encoder_hidden_states"]},
           "fp32_outputs_kept": list(fp32_outputs), "compared": a.label, "compared_graph": str(fp16),
           "compared_files": weights, "steps": steps, "runs": runs,
           "outputs": rows, "bar": a.bar, "attention_min_pearson": min(attn), "ok": min(attn) >= a.bar,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(Path(a.out), (json.dumps(doc, indent=1) + "\n").encode())
    print(f"attention maps: min Pearson {min(attn):.5f} (bar {a.bar}) -> {a.out}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
