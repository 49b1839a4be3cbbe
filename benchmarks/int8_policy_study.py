"""The study behind the INT8 op-exclusion policy (export/quantize.py): quantize the ToyWorld CLIP image tower
under policy variants and measure, against its FP32 ONNX graph on 200 held-out single-object scenes, the
zero-shot shape-naming agreement and the mean cosine of the global embedding.

    python benchmarks/int8_policy_study.py [--bundle engines/clip_toy] [--out benchmarks/results/int8-policy-study.json]

Needs an FP32 clip bundle (edgeseg export clip clip_toy --out engines/clip_toy). About 20 seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeseg.export.build.quantize import INT8_POLICY, calibration_set, component_feeds, quantize_int8
from edgeseg.runtime import Bundle
from edgeseg.runtime.fileio import atomic_write_bytes
from edgeseg.runtime.images import preprocess
from edgeseg.runtime.text import TextEncoder
from edgeseg.train.data.toyworld import SHAPES, ToyWorld, ToyWorldConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="engines/clip_toy")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/int8-policy-study.json")
    a = ap.parse_args()
    import onnxruntime as ort

    b = Bundle(a.bundle, provider="ort-cpu")
    comp, src = b.component("clip_image"), b.path / b.component("clip_image")["file"]
    world = ToyWorld("all", 0, ToyWorldConfig(size=b.preprocessing["image_size"][0], max_objects=1, min_scale=0.3))
    xs = [preprocess(s.image, b.preprocessing) for s in (world[i] for i in range(a.n)) if s.objects]
    text = TextEncoder(b, cache_dir=None).embed(list(SHAPES))

    def embed(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(["image_embeds"], {"image": x})[0] for x in xs])

    ref = embed(src)
    variants = {  # name -> (policy changes, extra exclusion patterns)
        "all weight+activation MatMuls, MinMax": (dict(weights_only=False, calibrate_method="MinMax"), ()),
        "attention MatMuls FP32, MinMax": (dict(calibrate_method="MinMax"), ()),
        "attention MatMuls FP32, Percentile (policy)": ({}, ()),
        "policy + patch conv FP32": ({}, (r"conv1",)),
        "policy + last block and projection FP32": ({}, (r"^/resblocks\.4/", r"^/(MatMul|out_proj|mlp)")),
        "all MatMuls, Percentile": (dict(weights_only=False), ()),
    }
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, (changes, exclude) in variants.items():
            policy = replace(INT8_POLICY, **changes)
            feeds = component_feeds(comp, b.manifest, b.path, calibration_set(64, size=b.preprocessing["image_size"][0]))
            info = quantize_int8(src, Path(d) / "q.onnx", feeds, policy, exclude)
            e = embed(Path(d) / "q.onnx")
            agree = float(((e @ text.T).argmax(1) == (ref @ text.T).argmax(1)).mean())
            rows.append({"variant": name, "policy": policy.to_dict(), "exclude": list(exclude),
                         "quantized_nodes": info["quantized_nodes"], "agreement": agree,
                         "mean_cosine": float((e * ref).sum(1).mean())})
            print(f"{name:<45} agreement {agree:.3f}  cosine {rows[-1]['mean_cosine']:.5f}", flush=True)
    doc = {"study": "INT8 op-exclusion policy, ToyWorld CLIP image tower", "command": " ".join(["python"] + sys.argv),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "scenes": len(xs),
           "metric": "zero-shot shape naming agreement with the FP32 ONNX graph (ORT CPU)", "results": rows}
    atomic_write_bytes(a.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
