"""MaskCLIP-only baselines for TCL and IFSeg, through the same runtime pipelines: the frozen CLIP's dense
(MaskCLIP) features against the label texts, with no training of the method's own parts.

An untrained checkpoint of either method is exactly that baseline:
- TCL: the decoder's gates start at 0 and its projection is CLIP's, so the grounding embeddings are MaskCLIP's
  (nearest-upsampled) and every mask is a monotone function of the MaskCLIP cosine (argmax = MaskCLIP's).
- IFSeg: the decoder's output projection starts at zero, so its pixel embeddings are the normalized MaskCLIP
  features and its logits their cosine to the label texts / 0.07 (``tests/train/test_ifseg.py`` checks this).
The script saves that checkpoint (``steps=0``), exports it and evaluates it with and without the method's
post-processing (PAMR / kNN) on the three splits:

    python benchmarks/maskclip_baseline.py tcl   [--n 200 --seed 0] -> results/eval-maskclip-<split>[-nopamr].json
    python benchmarks/maskclip_baseline.py ifseg [--n 200 --seed 0] -> results/eval-ifseg-maskclip-<split>[-noknn].json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeseg.export.bundle import export_bundle
from edgeseg.export.evaluation.segmentation import eval_method
from edgeseg.runtime.fileio import atomic_write_bytes

OUT = Path(__file__).resolve().parent / "results"
NAMES = {"tcl": ("eval-maskclip-{split}{suffix}.json", "-nopamr", "untrained TCL"),
         "ifseg": ("eval-ifseg-maskclip-{split}{suffix}.json", "-noknn", "untrained IFSeg decoder")}


def untrained_checkpoint(method: str, out: Path, clip: str) -> None:
    if method == "tcl":
        from edgeseg.train.train_tcl import TCLRecipe, train_tcl

        train_tcl(out, clip, TCLRecipe(steps=0, eval_n=0))
    else:
        from edgeseg.train.train_ifseg import IFSegRecipe, train_ifseg

        train_ifseg(out, clip, IFSegRecipe(steps=0, eval_n=0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=sorted(NAMES))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", default="clip_toy")
    a = p.parse_args()
    pattern, off, what = NAMES[a.method]
    with tempfile.TemporaryDirectory() as tmp:
        untrained_checkpoint(a.method, Path(tmp) / "maskclip", a.clip)
        bundle = export_bundle(a.method, Path(tmp) / "maskclip", Path(tmp) / "bundle", progress=False)
        for split in ("seen", "unseen", "generalized"):
            for post in (True, False):
                res = eval_method(a.method, bundle, split, a.n, a.seed, cache_dir=Path(tmp) / "cache",
                                  postprocess=post)
                doc = dict(res.__dict__, method=f"maskclip ({what}: frozen CLIP dense features)",
                           command=f"python benchmarks/maskclip_baseline.py {a.method} --n {a.n} --seed {a.seed}")
                print(res.summary().replace(f"{a.method:<6}", "maskclip"))
                atomic_write_bytes(OUT / pattern.format(split=split, suffix="" if post else off),
                                   (json.dumps(doc, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
