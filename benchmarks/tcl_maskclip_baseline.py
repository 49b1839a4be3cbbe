"""MaskCLIP-only baseline for TCL, through the same runtime pipeline: the frozen CLIP's dense (MaskCLIP)
features against the label texts, with no TCL training.

An untrained TCL checkpoint is exactly that baseline: the decoder's gates start at 0 and its projection is
CLIP's, so the grounding embeddings are MaskCLIP's (nearest-upsampled) and every inference mask is a monotone
function of the MaskCLIP cosine (the argmax over labels is MaskCLIP's). The script saves that checkpoint
(``train_tcl`` with ``steps=0``), exports it and evaluates it with and without PAMR on the three splits:

    python benchmarks/tcl_maskclip_baseline.py [--n 200 --seed 0]
    -> benchmarks/results/eval-maskclip-<split>[-nopamr].json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeseg.export.bundle import export_bundle
from edgeseg.export.evaluate import eval_method
from edgeseg.train.train_tcl import TCLRecipe, train_tcl

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip", default="clip_toy")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train_tcl(Path(tmp) / "maskclip", a.clip, TCLRecipe(steps=0, eval_n=0))
        bundle = export_bundle("tcl", Path(tmp) / "maskclip", Path(tmp) / "bundle", progress=False)
        for split in ("seen", "unseen", "generalized"):
            for post in (True, False):
                res = eval_method("tcl", bundle, split, a.n, a.seed, cache_dir=Path(tmp) / "cache", postprocess=post)
                doc = dict(res.__dict__, method="maskclip (untrained TCL: frozen CLIP dense features)",
                           command=f"python benchmarks/tcl_maskclip_baseline.py --n {a.n} --seed {a.seed}")
                print(res.summary().replace("tcl   ", "maskclip"))
                name = f"eval-maskclip-{split}{'' if post else '-nopamr'}.json"
                (OUT / name).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
