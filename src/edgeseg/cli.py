"""``edgeseg`` command line. Subcommands import their modules lazily: ``segment`` and ``eval`` need only the
runtime extra; ``train``, ``export``, ``verify`` and ``demo`` need torch (the train/export extras)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeseg.methods import METHODS, methods_of_kind


def _toyworld(a: argparse.Namespace) -> None:
    from PIL import Image

    from edgeseg.runtime.fileio import atomic_write_bytes
    from edgeseg.runtime.visualize import colorize, save_png
    from edgeseg.train.data.toyworld import CLASSES, ToyWorld, ToyWorldConfig

    if a.split == "refer":
        from edgeseg.train.data.refer import ReferWorld

        refer = ReferWorld(a.seed, ToyWorldConfig(size=a.size))
        samples = [refer[i] for i in range(a.n)]
        scenes = [r.scene for r in samples]
        for r in samples:  # the referring sample's own expression, first
            r.scene.expressions.insert(0, r.expression)
    else:
        world = ToyWorld(a.split, a.seed, ToyWorldConfig(size=a.size))
        scenes = [world[i] for i in range(a.n)]
    out = Path(a.out)
    for i, s in enumerate(scenes):
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
        atomic_write_bytes(out / f"{stem}.json", (json.dumps(meta, indent=2) + "\n").encode())
        print(f"{out / stem}.png  {s.expressions[0].text if a.split == 'refer' else s.caption}")


def _train(a: argparse.Namespace) -> None:
    if a.what == "ldm":  # --steps/--batch/--lr set the UNet stage (the VAE stage keeps its recipe)
        from edgeseg.train.train_ldm import LDMRecipe, train_ldm

        r = LDMRecipe(**{k: v for k, v in (("unet_steps", a.steps), ("unet_batch", a.batch), ("unet_lr", a.lr))
                         if v is not None})
        print(json.dumps(train_ldm(a.out or "train/checkpoints/ldm_toy", r), indent=2, default=str))
    elif a.what == "sam":
        from edgeseg.train.train_sam import SAMRecipe, train_sam

        r = SAMRecipe(**{k: v for k, v in (("steps", a.steps), ("batch_images", a.batch), ("lr", a.lr),
                                          ("warmup", a.warmup)) if v is not None})
        print(json.dumps(train_sam(a.out or "train/checkpoints/sam_toy", r), indent=2, default=str))
    elif a.what == "clip":
        from edgeseg.train.train_clip import ClipRecipe, train_clip

        r = ClipRecipe(**{k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr),
                                           ("warmup", a.warmup)) if v})
        print(json.dumps(train_clip(a.out or "train/checkpoints/clip_toy", r), indent=2))
    elif a.what == "ifseg":
        from edgeseg.train.train_ifseg import IFSegRecipe, train_ifseg

        r = IFSegRecipe(**{k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr),
                                            ("warmup", a.warmup)) if v})
        print(json.dumps(train_ifseg(a.out or "train/checkpoints/ifseg_toy", a.clip, r), indent=2))
    elif a.what == "tcl":
        from edgeseg.train.train_tcl import TCLRecipe, train_tcl

        r = TCLRecipe(**{k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr),
                                          ("warmup", a.warmup)) if v is not None})
        print(json.dumps(train_tcl(a.out or "train/checkpoints/tcl_toy", a.clip, r), indent=2))
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
    import platform
    import time

    import onnxruntime

    from edgeseg.export.fidelity import ensure_built, format_poly, polygraphy_compare, task_agreement
    from edgeseg.export.verify import format_table, verify_bundle

    target = ensure_built(a.bundle, a.precision) if a.precision else Path(a.bundle)
    rows = verify_bundle(target, a.checkpoint)
    print(f"{target}: per-output parity with FP32 PyTorch")
    print(format_table(rows))
    failed = [] if all(r.ok for r in rows) else ["per-output parity (rows marked NO)"]
    report: dict = {"command": "edgeseg " + " ".join(sys.argv[1:]), "bundle": str(target),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": platform.platform(), "onnxruntime": onnxruntime.__version__, "provider": "ort-cpu",
                    "parity": [r.__dict__ for r in rows]}
    if a.precision or a.task:
        task = task_agreement(target, a.n, a.seed)
        print(task.summary())
        report["task"] = task.to_dict()
        failed += [] if task.ok else ["task-level agreement"]
    if a.polygraphy:
        from edgeseg.runtime.bundle import Bundle

        src = Bundle(target).manifest.get("build", {}).get("source_bundle", a.bundle)
        poly = polygraphy_compare(src, target)
        print(f"polygraphy (ONNX Runtime CPU): {src} vs {target}")
        print(format_poly(poly))
        report["polygraphy"] = [r.__dict__ for r in poly]
        failed += [] if all(r.passed for r in poly) else ["polygraphy comparison"]
    if a.json:
        from edgeseg.runtime.fileio import atomic_write_bytes

        atomic_write_bytes(a.json, (json.dumps(report, indent=2, default=str) + "\n").encode())
    if failed:
        sys.exit(f"verify failed: {', '.join(failed)}")


def _build(a: argparse.Namespace) -> None:
    from edgeseg.export.build.builder import build_bundle
    from edgeseg.runtime.backends import BACKENDS, resolve_backend

    backend = resolve_backend(a.backend, "build")  # "tensorrt" (old name) -> "trt", with a warning
    out = build_bundle(a.bundle, a.precision, backend, a.out, calib_n=a.calib_n, calib_images=a.calib_images,
                       calib_texts=a.calib_texts, trt_options={"opt_level": a.opt_level} if BACKENDS[backend].engines
                       else None)
    print(f"wrote {a.precision} bundle {out} (backend {backend})")


def _lint(a: argparse.Namespace) -> None:
    from edgeseg.export.build.lint import format_issues, lint_bundle, lint_file

    path, errors = Path(a.path), 0
    targets = a.target or ["trt10.3", "trt11"]
    for target in targets:
        found = lint_bundle(path, target) if path.is_dir() else {path.name: lint_file(path, target)}
        for name, issues in found.items():
            print(f"[{target}] " + format_issues(issues, name))
            errors += sum(i.level == "error" for i in issues)
    if errors:
        sys.exit(f"lint: {errors} error(s): TensorRT would refuse these graphs")


def _segment(a: argparse.Namespace) -> None:
    from edgeseg.runtime.images import load_image
    from edgeseg.runtime.predictors import load_predictor
    from edgeseg.runtime.visualize import image_format, overlay, save_image

    image_format(a.out)
    from edgeseg.runtime.bundle import Bundle

    bundle = Bundle(a.bundle, provider=a.provider)
    if a.order and bundle.method != "tcl":
        raise ValueError(f"--order applies to TCL bundles; {a.bundle} holds method {bundle.method!r}: drop --order")
    pred = load_predictor(bundle, a.method, cache_dir=a.cache_dir, postprocess=not a.no_post,
                          **({"order": a.order} if a.order else {}))
    image = load_image(a.image, max_pixels=a.max_pixels)
    res = pred.segment(image, a.labels, window=a.window, stride=a.stride)
    save_image(overlay(image, res.label_map, res.labels, title=", ".join(res.labels), max_width=a.max_overlay_width),
               a.out)
    share = {l: round(float((res.label_map == i).mean()), 4) for i, l in enumerate(res.labels)}
    print(json.dumps({"out": a.out, "pixel_share": share, "timings_ms": {k: round(v, 2) for k, v in
                      res.timings_ms.items()}, "provider": res.provider, "truncated_labels": res.truncated_labels}))


def _refer(a: argparse.Namespace) -> None:
    from edgeseg.runtime.images import load_image
    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.runtime.visualize import image_format, refer_overlay, save_image

    image_format(a.out)
    options = {k: v for k, v in (("proposals", a.proposals), ("single_t", a.single_t), ("seed", a.seed)) if v is not None}
    if a.no_parser:
        options["parser"] = None
    pred = RefDiffPredictor(a.bundle, cache_dir=a.cache_dir, provider=a.provider, preset=a.preset,
                            progress=not a.quiet, memory=a.memory, keep_sessions=False, **options)
    image = load_image(a.image, max_pixels=a.max_pixels)
    pred.set_image(image)
    results = pred.predict_many(a.expression)
    outs = [a.out] if len(results) == 1 else [str(Path(a.out).with_name(f"{Path(a.out).stem}_{i}{Path(a.out).suffix}"))
                                              for i in range(len(results))]
    for res, out in zip(results, outs):
        save_image(refer_overlay(image, res, top=a.top, max_width=a.max_overlay_width), out)
        print(json.dumps({"out": out, "expression": res.expression, "target_word": res.target_word,
                          "parser": res.parsed.parser, "directions": res.parsed.directions,
                          "mask_pixels": int(res.mask.sum()), "proposals": len(res.proposals),
                          "best": {"source": res.sources[res.best],
                                   **{k: round(float(v[res.best]), 4) for k, v in res.scores.items()}},
                          "truncated": res.truncated, "warnings": res.warnings,
                          "timings_ms": {k: round(v, 1) for k, v in res.timings_ms.items()}, "provider": res.provider}))


def _eval(a: argparse.Namespace) -> None:
    from edgeseg.methods import get_method
    from edgeseg.runtime.fileio import atomic_write_bytes

    spec = get_method(a.method)
    bundle = a.bundle or f"engines/{spec.name}_toy"
    if spec.kind == "referring":
        res = spec.evaluate()(bundle, a.n, a.seed, preset=a.preset,
                              **({"position_bias": a.position_bias} if a.position_bias else {}))
        doc = res.to_dict()
    else:
        if a.order and spec.name != "tcl":
            raise ValueError(f"--order applies to TCL; drop it for {spec.name}")
        res = spec.evaluate()(spec.name, bundle, a.split, a.n, a.seed, compare_torch=a.compare_torch,
                              postprocess=not a.no_post, options={"order": a.order} if a.order else None)
        doc = res.__dict__
    print(res.summary())
    if a.json:
        atomic_write_bytes(a.json, (json.dumps(doc, indent=2, default=str) + "\n").encode())


def _demo(a: argparse.Namespace) -> None:
    from edgeseg.export.demo import run_demo

    report = run_demo(a.out, a.bundle, n_eval=a.n)
    print(Path(a.out, "report.md").read_text())
    print(f"overlays and report under {a.out}/ ({report['total_seconds']} s)")


def _bench(a: argparse.Namespace) -> None:
    from edgeseg.export.bench.results import compare, load_document, write_document
    from edgeseg.export.bench.report import compare_markdown, markdown

    if a.what == "compare":
        if len(a.targets) != 2:
            raise ValueError(f"bench compare needs two result files A.json B.json; got {a.targets}")
        rows = compare(load_document(a.targets[0]), load_document(a.targets[1]))
        print(compare_markdown(rows, *a.targets))
        return
    if a.what == "report":
        for t in a.targets:
            print("\n".join(str(p) for p in write_document(load_document(t), t)))
        return
    if a.what == "components":
        from edgeseg.export.bench.components import CASES, bench_components

        doc = bench_components(a.targets or list(CASES)[:3], a.backends, tuple(a.batch), a.iters, a.warmup,
                               a.threads, memory=not a.no_memory, workdir=a.workdir)
    elif a.what == "pipeline" and _bundle_method(a.targets[0] if a.targets else "") == "refdiff":
        from edgeseg.export.bench.refdiff_pipeline import bench_refdiff

        doc = bench_refdiff(a.targets[0], a.backends, tuple(a.k), a.iters, a.warmup, a.threads, a.images, a.size,
                            a.workdir)
    elif a.what == "pipeline":
        from edgeseg.export.bench.pipelines import bench_pipeline

        doc = bench_pipeline(a.targets[0] if a.targets else "engines/lseg_toy", a.backends,
                             a.labels.split(",") if a.labels else None, a.iters, a.warmup, a.threads)
    elif a.what == "text-cache":
        from edgeseg.export.bench.pipelines import bench_text_cache

        doc = bench_text_cache(a.targets[0] if a.targets else "engines/lseg_toy",
                               a.labels.split(",") if a.labels else None, a.iters, a.threads)
    else:
        from edgeseg.export.bench.pipelines import bench_runtime

        doc = bench_runtime(a.iters)
    out = a.out or f"benchmarks/results/{a.what}.json"
    written = write_document(doc, out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in written))
    if doc["rows"] and all(r.get("skipped") for r in doc["rows"]):
        sys.exit("bench: every row was skipped: " + "; ".join(f"{r['backend']}: {r['skipped']}" for r in doc["rows"]))


def _bundle_method(path: str) -> str | None:
    """The method a bundle folder's manifest names, or None (no folder / manifest)."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("method")
    except (OSError, ValueError):
        return None


def _serve(a: argparse.Namespace) -> None:
    """edgeseg serve (issue 17): Triton Inference Server (nvidia-pytriton) with one model per bundle."""
    from edgeseg.serve.app import default_threads, run_forever
    from edgeseg.serve.config import Batching
    from edgeseg.serve.repository import ModelOptions
    from edgeseg.serve.server import Ports

    options = ModelOptions(a.provider, a.threads or default_threads(a.instances), a.cache_dir,
                           {"postprocess": False} if a.no_post else {}, a.max_pixels, a.max_expressions)
    run_forever(a.bundles, a.name, Ports(a.http_port, a.grpc_port, a.metrics_port), a.host, a.instances,
                Batching(a.max_batch, None if a.no_dynamic_batching else a.max_queue_delay_us), options,
                a.exit_timeout, duration_s=a.duration)


def _triton_repo(a: argparse.Namespace) -> None:
    """edgeseg triton-repo (issue 17): a model repository for the standard Triton container."""
    from edgeseg.serve.config import Batching
    from edgeseg.serve.repository import ModelOptions, export_repository

    written = export_repository(a.bundles, a.out, a.name, Batching(a.max_batch, None if a.no_dynamic_batching
                                                                  else a.max_queue_delay_us), a.instances, a.device,
                                a.trt_accelerator, a.component_backend,
                                ModelOptions(cache_dir=a.cache_dir, predictor={"postprocess": False} if a.no_post else {},
                                             max_expressions=a.max_expressions))
    print("\n".join(f"wrote {p}" for p in written))
    print(f"run: docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {Path(a.out).resolve()}:/models "
          f"<a tritonserver image with edgeseg[runtime] installed> tritonserver --model-repository=/models")


def _serve_options(s: argparse.ArgumentParser) -> None:
    """Options shared by edgeseg serve and edgeseg triton-repo."""
    from edgeseg.serve.protocol import DEFAULT_MAX_EXPRESSIONS

    s.add_argument("bundles", nargs="+", help="bundle folders (edgeseg export / build ...)")
    s.add_argument("--name", action="append", help="model name of each bundle, in order (default: the folder's name)")
    s.add_argument("--instances", type=_positive_int, default=1, help="model instances per bundle")
    s.add_argument("--max-batch", type=_positive_int, default=8, help="largest dynamic batch (requests' items)")
    s.add_argument("--max-queue-delay-us", type=_non_negative_int, default=2000,
                   help="how long the dynamic batcher waits to fill a batch (microseconds)")
    s.add_argument("--no-dynamic-batching", action="store_true", help="run each request on its own")
    s.add_argument("--no-post", action="store_true", help="skip the method's refinement (TCL: PAMR, IFSeg: kNN)")
    s.add_argument("--max-expressions", type=_positive_int, default=DEFAULT_MAX_EXPRESSIONS,
                   help="Ref-Diff: most expressions per image in one request")
    s.add_argument("--cache-dir", default="default", help="text-embedding cache folder ('default', 'none' or a path)")


def _methods_help(kind: str | None = None) -> str:
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values() if kind in (None, m.kind))


def _int_at_least(lo: int):
    """argparse type: an int >= ``lo`` (a usage error, exit 2, otherwise)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be >= {lo}")
        return v

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _tcl_order(s: argparse.ArgumentParser) -> None:
    s.add_argument("--order", choices=["official", "mix-first"],
                   help="tcl: PAMR on the TCL mask then the MaskCLIP mix (official, the default) or mix first and "
                        "PAMR at the input size (edgeseg's earlier order, better on ToyWorld)")


def _image_limits(s: argparse.ArgumentParser) -> None:
    from edgeseg.runtime.images import DEFAULT_MAX_PIXELS
    from edgeseg.runtime.visualize import MAX_OVERLAY_WIDTH

    s.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger input images (default {DEFAULT_MAX_PIXELS:,}: fits in memory)")
    s.add_argument("--max-overlay-width", type=_positive_int, default=MAX_OVERLAY_WIDTH,
                   help=f"the overlay's width is at most this many pixels (default {MAX_OVERLAY_WIDTH})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeseg", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("toyworld", help="write ToyWorld scenes (image, masks, JSON)")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=_positive_int, default=4)
    s.add_argument("--split", default="all", help="all, train, seen, unseen, clip; refer: the referring split "
                                                   "(its expression first in the JSON)")
    s.add_argument("--size", type=_positive_int, default=96)
    s.set_defaults(fn=_toyworld)

    s = sub.add_parser("train", help="train the tiny ToyWorld models (CLIP, LSeg, IFSeg, TCL, and Ref-Diff's LDM "
                                     "and SAM)")
    s.add_argument("what", choices=["clip", "lseg", "ifseg", "tcl", "ldm", "sam"])
    s.add_argument("--out")
    s.add_argument("--clip", default="clip_toy", help="CLIP checkpoint for LSeg / IFSeg (default: bundled clip_toy)")
    s.add_argument("--steps", type=_positive_int)
    s.add_argument("--batch", type=_positive_int)
    s.add_argument("--lr", type=float)
    s.add_argument("--warmup", type=_non_negative_int)
    s.add_argument("--init", help="lseg only: continue training from this LSeg checkpoint")
    s.set_defaults(fn=_train)

    s = sub.add_parser("export", help="checkpoint -> ONNX bundle with manifest")
    s.add_argument("method", choices=list(METHODS), help=_methods_help())
    s.add_argument("checkpoint", help="; ".join(f"{m.name}: {m.checkpoint_help}" for m in METHODS.values()))
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_export)

    s = sub.add_parser("verify", help="compare every bundle component with PyTorch (and FP16/INT8 fidelity)")
    s.add_argument("bundle")
    s.add_argument("--checkpoint", help="override the source checkpoint named in the manifest")
    s.add_argument("--precision", choices=["fp32", "fp16", "int8", "int8dyn"],
                   help="verify this precision build of an FP32 bundle (built into BUNDLE_<precision> if missing "
                        "or stale), with the task-level agreement bar")
    s.add_argument("--task", action="store_true", help="also report task-level agreement for an FP32 bundle")
    s.add_argument("--polygraphy", action="store_true", help="also compare each ONNX graph with its FP32 source "
                                                             "through polygraphy (ONNX Runtime CPU)")
    s.add_argument("--n", type=_positive_int, default=100, help="ToyWorld scenes for the task-level agreement")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--json", help="write the report here")
    s.set_defaults(fn=_verify)

    from edgeseg.runtime.backends import BACKENDS, BUILD_CHOICES, PROVIDER_CHOICES, describe

    backends = "{" + ",".join(BACKENDS) + "}"  # old spellings are accepted (with a warning) but not advertised
    s = sub.add_parser("build", help="FP32 bundle -> FP16 / INT8 bundle (and TensorRT engines)")
    s.add_argument("bundle", help="an FP32 bundle folder (edgeseg export ...)")
    s.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8", "int8dyn"],
                   help="int8: Q/DQ (portable: ONNX Runtime, TensorRT); int8dyn: ONNX Runtime CPU dynamic INT8 "
                        "(fastest on CPU, ort-cpu only)")
    s.add_argument("--backend", default="ort-cpu", choices=BUILD_CHOICES, metavar=backends,
                   help=f"what the bundle is built for ({describe()}); trt builds engines on this machine's GPU "
                        f"(needs TensorRT 10.3+ / 11); 'tensorrt' is the old name of trt")
    s.add_argument("--out", help="default: BUNDLE_<precision> (BUNDLE_<precision>_trt for trt)")
    s.add_argument("--calib-n", type=_positive_int, default=64, help="int8: calibration images (and up to 4x texts)")
    s.add_argument("--calib-images", help="int8: a folder of your images (default: ToyWorld scenes)")
    s.add_argument("--calib-texts", help="int8: a text file, one prompt per line (default: ToyWorld texts)")
    s.add_argument("--opt-level", type=_non_negative_int, default=3, help="trt: TensorRT builder optimization level 0-5")
    s.set_defaults(fn=_build)

    s = sub.add_parser("lint", help="TensorRT-compatibility lint of an ONNX file or every file of a bundle")
    s.add_argument("path")
    s.add_argument("--target", action="append", choices=["trt10.3", "trt11"], help="default: both")
    s.set_defaults(fn=_lint)

    s = sub.add_parser("segment", help="segment an image with a bundle (runtime only)")
    s.add_argument("image")
    s.add_argument("--labels", required=True, help='comma-separated, e.g. "circle,star,grass"')
    s.add_argument("--bundle", default="engines/lseg_toy")
    s.add_argument("--method", choices=methods_of_kind("segmentation"),
                   help="check the bundle holds this method (default: the bundle's)")
    s.add_argument("--no-post", action="store_true", help="skip the method's refinement (TCL: PAMR, IFSeg: kNN)")
    _tcl_order(s)
    s.add_argument("--window", type=_non_negative_int,
                   help="sliding-window inference with windows of the encoder's input size (pixels of the prepared "
                        "image); 0: one resized image; default: the bundle's (lang-seg / TCL official bundles: their "
                        "evaluation's windows, others: one resized image)")
    s.add_argument("--stride", type=_positive_int, help="window stride (default: the bundle's, else half the window)")
    s.add_argument("--out", default="overlay.png", help="overlay image (.png, .jpg, .webp)")
    _image_limits(s)
    s.add_argument("--provider", choices=PROVIDER_CHOICES, metavar=backends,
                   help="the backend to run on; default: the one the bundle was built for (ort-cpu for exports); "
                        "the old names cpu, cuda, tensorrt (= ort-cpu, ort-cuda, ort-trt) still work and warn")
    s.add_argument("--cache-dir", default="default", help="text-embedding cache folder ('default' or a path)")
    s.set_defaults(fn=_segment)

    s = sub.add_parser("refer", help="referring segmentation with a Ref-Diff bundle (runtime only)")
    s.add_argument("image")
    s.add_argument("expression", nargs="+", help='one or more expressions, e.g. "the red circle on the left"')
    s.add_argument("--bundle", default="engines/refdiff_toy")
    s.add_argument("--out", default="refer.png", help="overlay image, .png, .jpg or .webp (several expressions: "
                                                       "OUT_0.png, OUT_1.png...)")
    _image_limits(s)
    s.add_argument("--proposals", choices=["sam", "thresholds", "both"], help="default: the bundle's (sam)")
    s.add_argument("--single-t", type=_non_negative_int, help="the paper's single-timestep mode at this t (default: DDIM steps)")
    s.add_argument("--seed", type=_non_negative_int, help="DDIM noise seed (default: the bundle's)")
    s.add_argument("--top", type=_positive_int, default=3, help="proposals drawn in the overlay")
    s.add_argument("--no-parser", action="store_true", help="skip spaCy: the parser-free target-word rule")
    s.add_argument("--preset", choices=["released", "paper"], default="released",
                   help="Ref-Diff settings: the released code's (default) or the paper's (runtime/refdiff_presets.py)")
    s.add_argument("--provider", choices=PROVIDER_CHOICES, metavar=backends,
                   help="the backend to run on (default: the bundle's)")
    s.add_argument("--cache-dir", default="default", help="text cache folder ('default' or a path)")
    s.add_argument("--memory", choices=["auto", "low", "speed"], default="auto",
                   help="ONNX Runtime memory profile: low (no CPU arena, sessions hold only their weights "
                        "between runs), speed (ONNX Runtime's defaults), auto (default: low for bundles of "
                        ">= 1 GiB of weights, else speed; see README)")
    s.add_argument("--quiet", action="store_true", help="no stage progress on stderr")
    s.set_defaults(fn=_refer)

    s = sub.add_parser("eval", help="ToyWorld mIoU (segmentation) or oIoU/mIoU (refdiff) through the runtime")
    s.add_argument("method", choices=[m.name for m in METHODS.values() if m.evaluate_path],
                   help=_methods_help())
    s.add_argument("--bundle", help="default: engines/<method>_toy")
    s.add_argument("--no-post", action="store_true", help="skip the method's refinement (TCL: PAMR, IFSeg: kNN)")
    _tcl_order(s)
    s.add_argument("--split", default="seen", choices=["seen", "unseen", "generalized"])
    s.add_argument("--n", type=_positive_int, default=200)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--compare-torch", metavar="CHECKPOINT", help="also report runtime-vs-PyTorch agreement")
    s.add_argument("--preset", choices=["released", "paper"], default="released",
                   help="refdiff: the released code's settings (default) or the paper's (runtime/refdiff_presets.py)")
    s.add_argument("--position-bias", choices=["soft", "hard", "both"],
                   help="refdiff: the branch whose input is x*P (default: the bundle's, hard as the released "
                        "code; soft: the paper's formula)")
    s.add_argument("--json", help="write the result as JSON here")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("demo", help="bundled checkpoints -> bundle -> overlays + report")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--bundle", default="engines/lseg_toy")
    s.add_argument("--n", type=_positive_int, default=50, help="scenes per eval split")
    s.set_defaults(fn=_demo)

    s = sub.add_parser("bench", help="latency benchmarks: JSON + markdown + PNG under benchmarks/results/",
                       description="components [CASE ...]: one component across backends and batch sizes; "
                                   "pipeline [BUNDLE]: set_image + predict per stage and backend; text-cache "
                                   "[BUNDLE]: encode vs cache hits; runtime: import time and install size; "
                                   "compare A.json B.json: speed-up ratios; report R.json: redraw table and plot")
    s.add_argument("what", choices=["components", "pipeline", "text-cache", "runtime", "compare", "report"])
    s.add_argument("targets", nargs="*", help="components: cases (default: the tiny ones; see "
                                              "edgeseg.export.bench.components.CASES); pipeline / text-cache: an FP32 "
                                              "bundle (default engines/lseg_toy); compare: A.json B.json")
    s.add_argument("--backends", nargs="+", help="default: torch-cpu-fp32 ort-cpu-fp32 ort-cpu-int8 (CPU) or the "
                                                  "CUDA/TensorRT set (GPU); see bench_components.BACKENDS")
    s.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="components: batch sizes")
    s.add_argument("--labels", help="pipeline / text-cache: comma-separated (default: the 14 ToyWorld classes)")
    s.add_argument("--iters", type=_positive_int, default=20)
    s.add_argument("--warmup", type=_non_negative_int, default=3)
    s.add_argument("--threads", type=_positive_int, default=2)
    s.add_argument("--no-memory", action="store_true", help="components: skip the per-backend memory subprocess")
    s.add_argument("--workdir", help="components / refdiff pipeline: keep exported/built bundles here for reuse "
                                     "(default: temporary; never beside the bundle)")
    s.add_argument("--k", type=_positive_int, nargs="+", default=[1, 4, 16],
                   help="refdiff pipeline: expressions per image")
    s.add_argument("--images", help="refdiff pipeline: a folder of your images (default: ToyWorld scenes)")
    s.add_argument("--size", type=_positive_int, help="refdiff pipeline: resize images to SIZE x SIZE")
    s.add_argument("--out", help="default: benchmarks/results/<what>.json")
    s.set_defaults(fn=_bench)

    s = sub.add_parser("serve", help="serve bundles on Triton Inference Server (KServe v2 HTTP/gRPC, dynamic "
                                     "batching; pip install 'edgeseg[serve]')")
    _serve_options(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--http-port", type=_positive_int, default=8000)
    s.add_argument("--grpc-port", type=_positive_int, default=8001)
    s.add_argument("--metrics-port", type=_positive_int, default=8002)
    s.add_argument("--provider", choices=PROVIDER_CHOICES, metavar=backends, help="the backend each instance runs "
                                                                                 "on (default: the bundle's)")
    s.add_argument("--threads", type=_positive_int, help="ONNX Runtime threads per instance (default: cores / "
                                                         "instances)")
    s.add_argument("--max-pixels", type=_positive_int, help="refuse larger images (default 40 MP)")
    s.add_argument("--exit-timeout", type=_non_negative_int, default=10,
                   help="seconds Triton waits for in-flight requests and open connections when stopping")
    s.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C / SIGTERM)")
    s.set_defaults(fn=_serve)

    s = sub.add_parser("triton-repo", help="bundles -> model repository for the standard Triton container "
                                           "(a model per component + a BLS pipeline per bundle)")
    _serve_options(s)
    s.add_argument("--out", required=True, help="the model repository folder (replaced atomically)")
    s.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="instance kind of the component models")
    s.add_argument("--trt-accelerator", choices=["fp16", "fp32"],
                   help="ONNX components on GPU: ONNX Runtime's TensorRT execution provider at this precision")
    s.add_argument("--component-backend", choices=["onnxruntime", "python"], default="onnxruntime",
                   help="python: components run by ONNX Runtime inside the Python backend (for servers without "
                        "Triton's onnxruntime backend, e.g. nvidia-pytriton's)")
    s.set_defaults(fn=_triton_repo)
    return p


def main(argv: list[str] | None = None) -> None:
    """Run one command. A user's mistake ends with one line ``edgeseg CMD: error: ...`` and exit status 1
    (2 for a wrong command line); a bug keeps its traceback (``--debug`` / ``EDGESEG_DEBUG=1``: always)."""
    import os

    from edgeseg.errors import user_message

    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        sys.exit(f"edgeseg {args.command}: interrupted")
    except Exception as e:  # noqa: BLE001 - sorted into a user's mistake (one line) or a bug (traceback)
        message = None if args.debug or os.environ.get("EDGESEG_DEBUG") else user_message(e)
        if message is None:
            raise
        sys.exit(f"edgeseg {args.command}: error: {message}")


if __name__ == "__main__":
    main()
