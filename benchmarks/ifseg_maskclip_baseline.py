"""MaskCLIP-only baseline for IFSeg, through the same runtime pipeline: the frozen CLIP's dense (MaskCLIP)
features against the label texts, with no decoder training.

An untrained IFSeg checkpoint is exactly that baseline: the decoder's output projection starts at zero, so its
pixel embeddings are the normalized MaskCLIP features and its logits are their cosine to the label texts / 0.07
(``tests/train/test_ifseg.py`` checks this). The script saves that checkpoint (``train_ifseg`` with
``steps=0``), exports it and evaluates it with and without the kNN post-processing on the three splits:

    python benchmarks/ifseg_maskclip_baseline.py [--n 200 --seed 0]
    -> benchmarks/results/eval-ifseg-maskclip-<split>[-noknn].json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeseg.export.bundle import export_bundle
from edgeseg.export.evaluate import eval_method
from edgeseg.train.train_ifseg import IFSegRecipe, train_ifseg

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", default="clip_toy")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_ifseg(Path(tmp) / "maskclip", a.clip, IFSegRecipe(steps=0, eval_n=0))
        bundle = export_bundle("ifseg", Path(tmp) / "maskclip", Path(tmp) / "bundle", progress=False)
        for split in ("seen", "unseen", "generalized"):
            for post in (True, False):
                res = eval_method("ifseg", bundle, split, a.n, a.seed, cache_dir=Path(tmp) / "cache", postprocess=post)
                doc = dict(res.__dict__, method="maskclip (untrained IFSeg decoder: frozen CLIP dense features)",
                           command=f"python benchmarks/ifseg_maskclip_baseline.py --n {a.n} --seed {a.seed}")
                print(res.summary().replace("ifseg ", "maskclip"))
                name = f"eval-ifseg-maskclip-{split}{'' if post else '-noknn'}.json"
                (OUT / name).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
