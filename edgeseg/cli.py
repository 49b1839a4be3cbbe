"""``edgeseg`` command line. Subcommands import their modules lazily: ``segment`` and ``eval`` need only the
runtime extra; ``train``, ``export``, ``verify`` and ``demo`` need torch (the train/export extras)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _toyworld(a: argparse.Namespace) -> None:
    from PIL import Image

    from edgeseg.runtime.visualize import colorize, save_png
    from edgeseg.train.data.toyworld import CLASSES, ToyWorld, ToyWorldConfig

    world = ToyWorld(a.split, a.seed, ToyWorldConfig(size=a.size))
    out = Path(a.out)
    for i in range(a.n):
        s = world[i]
        stem = f"scene_{i:03d}"
        save_png(Image.fromarray(s.image), out / f"{stem}.png")
        save_png(Image.fromarray(colorize(s.semantic)), out / f"{stem}_semantic.png")
        save_png(Image.fromarray((s.instances * (255 // max(1, len(s.objects)))).astype("uint8")),
                 out / f"{stem}_instances.png")
        meta = {"split": a.split, "seed": a.seed, "index": i, "stuff": s.stuff, "caption": s.caption,
                "classes": list(CLASSES),
                "objects": [{"shape": o.shape, "colour": o.colour, "area": o.area, "bbox": o.bbox,
                             "instance_id": k + 1} for k, o in enumerate(s.objects)],
                "expressions": [{"text": e.text, "target_instance_id": e.target + 1, "kind": e.kind}
                                for e in s.expressions]}
        (out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{out / stem}.png  {s.caption}")


def _train(a: argparse.Namespace) -> None:
    if a.what == "clip":
        from edgeseg.train.train_clip import ClipRecipe, train_clip

        r = ClipRecipe(**{k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr),
                                           ("warmup", a.warmup)) if v})
        print(json.dumps(train_clip(a.out or "train/checkpoints/clip_toy", r), indent=2))
    else:
        from edgeseg.train.train_lseg import LSegRecipe, train_lseg

        r = LSegRecipe(**{k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr), ("init", a.init),
                                           ("warmup", a.warmup)) if v})
        print(json.dumps(train_lseg(a.out or "train/checkpoints/lseg_toy", a.clip, r), indent=2))


def _export(a: argparse.Namespace) -> None:
    from edgeseg.export.bundle import export_bundle

    out = export_bundle(a.method, a.checkpoint, a.out)
    print(f"wrote bundle {out}")


def _verify(a: argparse.Namespace) -> None:
    from edgeseg.export.verify import format_table, verify_bundle

    rows = verify_bundle(a.bundle, a.checkpoint)
    print(format_table(rows))
    if not all(r.ok for r in rows):
        sys.exit("parity check failed: see the rows marked NO")


def _segment(a: argparse.Namespace) -> None:
    from edgeseg.runtime.images import load_image
    from edgeseg.runtime.lseg import LSegPredictor
    from edgeseg.runtime.visualize import overlay, save_png

    pred = LSegPredictor(a.bundle, provider=a.provider, cache_dir=a.cache_dir)
    image = load_image(a.image)
    res = pred.segment(image, a.labels)
    save_png(overlay(image, res.label_map, res.labels, title=", ".join(res.labels)), a.out)
    share = {l: round(float((res.label_map == i).mean()), 4) for i, l in enumerate(res.labels)}
    print(json.dumps({"out": a.out, "pixel_share": share, "timings_ms": {k: round(v, 2) for k, v in
                      res.timings_ms.items()}, "provider": res.provider, "truncated_labels": res.truncated_labels}))


def _eval(a: argparse.Namespace) -> None:
    from edgeseg.export.evaluate import eval_lseg

    res = eval_lseg(a.bundle, a.split, a.n, a.seed, compare_torch=a.compare_torch)
    print(res.summary())
    if a.json:
        Path(a.json).write_text(json.dumps(res.__dict__, indent=2) + "\n")


def _demo(a: argparse.Namespace) -> None:
    from edgeseg.export.demo import run_demo

    report = run_demo(a.out, a.bundle, n_eval=a.n)
    print(Path(a.out, "report.md").read_text())
    print(f"overlays and report under {a.out}/ ({report['total_seconds']} s)")


def _bench(a: argparse.Namespace) -> None:
    from edgeseg.export.bench import bench_encoders, format_results

    doc = bench_encoders(a.cases, a.iters, a.batch, a.threads, a.out)
    print(format_results(doc))
    print(f"wrote {a.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeseg", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("toyworld", help="write ToyWorld scenes (image, masks, JSON)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=4)
    s.add_argument("--split", default="all")
    s.add_argument("--size", type=int, default=96)
    s.set_defaults(fn=_toyworld)

    s = sub.add_parser("train", help="train the tiny CLIP or LSeg on ToyWorld")
    s.add_argument("what", choices=["clip", "lseg"])
    s.add_argument("--out")
    s.add_argument("--clip", default="clip_toy", help="CLIP checkpoint for LSeg (default: bundled clip_toy)")
    s.add_argument("--steps", type=int)
    s.add_argument("--batch", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--warmup", type=int)
    s.add_argument("--init", help="lseg only: continue training from this LSeg checkpoint")
    s.set_defaults(fn=_train)

    s = sub.add_parser("export", help="checkpoint -> ONNX bundle with manifest")
    s.add_argument("method", choices=["lseg", "clip"])
    s.add_argument("checkpoint", help="checkpoint folder or bundled name (lseg_toy, clip_toy); for clip also "
                                      "ViT-B-16 (random init) or ViT-B-16:/path/to/open_clip.pt")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_export)

    s = sub.add_parser("verify", help="compare every bundle component with PyTorch")
    s.add_argument("bundle")
    s.add_argument("--checkpoint", help="override the source checkpoint named in the manifest")
    s.set_defaults(fn=_verify)

    s = sub.add_parser("segment", help="segment an image with a bundle (runtime only)")
    s.add_argument("image")
    s.add_argument("--labels", required=True, help='comma-separated, e.g. "circle,star,grass"')
    s.add_argument("--bundle", default="engines/lseg_toy")
    s.add_argument("--out", default="overlay.png")
    s.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    s.add_argument("--cache-dir", default="default", help="text-embedding cache folder ('default' or a path)")
    s.set_defaults(fn=_segment)

    s = sub.add_parser("eval", help="ToyWorld mIoU through the runtime")
    s.add_argument("method", choices=["lseg"])
    s.add_argument("--bundle", default="engines/lseg_toy")
    s.add_argument("--split", default="seen", choices=["seen", "unseen", "generalized"])
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--compare-torch", metavar="CHECKPOINT", help="also report runtime-vs-PyTorch agreement")
    s.add_argument("--json", help="write the result as JSON here")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("demo", help="bundled checkpoints -> bundle -> overlays + report")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--bundle", default="engines/lseg_toy")
    s.add_argument("--n", type=int, default=50, help="scenes per eval split")
    s.set_defaults(fn=_demo)

    s = sub.add_parser("bench", help="latency benchmarks (JSON under benchmarks/results/)")
    s.add_argument("what", choices=["encoders"])
    s.add_argument("--cases", nargs="*", help="default: all (lseg_encoder/toy-tiny clip_image/toy-tiny "
                                               "clip_image/ViT-B-16)")
    s.add_argument("--iters", type=int, default=20)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", default="benchmarks/results/encoders-cpu.json")
    s.set_defaults(fn=_bench)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError, ImportError) as e:
        sys.exit(f"edgeseg {args.command}: error: {e}")


if __name__ == "__main__":
    main()
