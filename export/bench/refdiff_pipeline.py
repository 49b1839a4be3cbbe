"""``edgeseg bench pipeline <refdiff bundle>``: Ref-Diff per stage, per backend, K expressions per image.

Rows: one per backend x K (``--k 1 4 16``): ``set_image`` (the image stages: VAE, SAM encoder, SAM proposals,
CLIP proposals) then ``predict_many`` of K expressions (text, UNet, scoring), on ToyWorld scenes or the
user's images (``--images DIR``, resized to ``--size`` when given). Stage times are the predictor's own
``timings_ms`` (per-expression stages summed over the K expressions); ``extra.per_extra_expression_ms`` is the
slope of the total between the smallest and the largest K. Every backend runs in its own subprocess, so
``memory.peak_rss_mb`` is that backend's alone. FP16/INT8 variants are built into ``--workdir`` (a temporary
folder by default), never beside the bundle. A row that cannot run says why in ``skipped``.
Backends: ``ort-cpu-fp32``, ``ort-cpu-fp16``, ``ort-cpu-int8``, ``ort-cuda-fp16`` and ``torch-cpu-fp32``
(the PyTorch reference, :mod:`edgeseg.export.refdiff_reference`, fed the FP32 runtime's SAM proposals: it times
text + UNet + scoring only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeseg.export.bench.results import latency_stats, make_row, new_document

REFDIFF_BACKENDS = ("ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8", "ort-cuda-fp16", "torch-cpu-fp32")
DEFAULT_BACKENDS = ("ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8", "torch-cpu-fp32")


def bench_images(size: int, images: str | Path | None = None, n: int = 4, seed: int = 0
                 ) -> tuple[list[np.ndarray], list[list[str]]]:
    """(n H x W x 3 uint8 images, per image its expressions): ToyWorld referring scenes, or ``images``' files
    (resized to ``size`` x ``size``) with generic expressions."""
    from edgeseg.runtime.images import load_image

    generic = ["the red circle", "the blue square on the left", "the small green triangle", "the biggest object"]
    if images is not None:
        from edgeseg.export.build.quantize import IMAGE_SUFFIXES

        folder = Path(images)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n] if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"--images {str(folder)!r}: no {'/'.join(IMAGE_SUFFIXES)} files there")
        from PIL import Image

        imgs = [np.asarray(Image.fromarray(load_image(f)).resize((size, size))) for f in files]
        return imgs, [generic] * len(imgs)
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    world = ReferWorld(seed, ToyWorldConfig(size=size))
    samples = [world[i] for i in range(n)]
    return [s.scene.image for s in samples], [[e.text for e in s.scene.expressions] + generic for s in samples]


def _expressions(own: list[str], k: int) -> list[str]:
    return [own[i % len(own)] for i in range(k)]


def _variant(bundle: Path, precision: str, workdir: Path, calib_n: int) -> Path:
    """The ``precision`` build of ``bundle`` in ``workdir`` (built once, reused while its manifest exists)."""
    if precision == "fp32":
        return bundle
    out = workdir / f"{bundle.name}_{precision}"
    if (out / "manifest.json").is_file():
        return out
    from edgeseg.export.build.builder import build_bundle

    return build_bundle(bundle, precision, "ort-cpu", out, calib_n=calib_n, progress=False)


def run_backend(backend: str, bundle: str, ks: list[int], iters: int, warmup: int, threads: int,
                images: str | None, size: int | None, workdir: str, calib_n: int) -> dict:
    """One backend's rows (in this process): {"rows": [...], "peak_rss_mb"}; raises with the reason."""
    import resource

    from edgeseg.runtime.refdiff import RefDiffPredictor

    engine, *rest = backend.rsplit("-", 1)
    precision = rest[0]
    fp32 = Path(bundle)
    side = size or json.loads((fp32 / "manifest.json").read_text())["method_config"]["vae_preprocessing"][
        "image_size"][0]
    imgs, exprs = bench_images(side, images)
    if engine == "torch-cpu":
        return _run_torch(fp32, imgs, exprs, ks, iters, warmup, threads)
    provider = "ort-cuda" if engine == "ort-cuda" else "ort-cpu"
    from edgeseg.runtime.bundle import Bundle

    target = _variant(fp32, precision, Path(workdir), calib_n)
    pred = RefDiffPredictor(Bundle(target, provider=provider, threads=threads), cache_dir=None, parser=None)
    rows = []
    for k in ks:
        totals, stages = [], []
        for it in range(warmup + iters):
            i = it % len(imgs)
            pred.generator.clear_cache()  # every iteration pays the SAM stages (images repeat across K rows)
            t0 = time.perf_counter()
            state = pred.encode(imgs[i])
            res = pred.predict_many(_expressions(exprs[i], k), state=state)
            dt = (time.perf_counter() - t0) * 1e3
            if it >= warmup:
                totals.append(dt)
                st = dict(state.timings_ms)
                for key in ("text", "unet", "score"):
                    st[key] = float(sum(r.timings_ms.get(key, 0.0) for r in res))
                stages.append(st)
        rows.append({"k": k, "latency_ms": latency_stats(totals),
                     "stages_ms": {s: float(np.median([x.get(s, 0.0) for x in stages])) for s in stages[0]}})
    return {"rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bundle": str(target)}


def _run_torch(fp32: Path, imgs: list[np.ndarray], exprs: list[list[str]], ks: list[int], iters: int,
               warmup: int, threads: int) -> dict:
    """The PyTorch reference (eager FP32, CPU): text + UNet + scoring per expression on the FP32 runtime's SAM
    proposals (the reference takes proposals as input)."""
    import resource

    import torch

    from edgeseg.export.refdiff_reference import TorchRefDiff
    from edgeseg.runtime.refdiff import RefDiffPredictor

    torch.set_num_threads(threads)
    man = json.loads((fp32 / "manifest.json").read_text())
    ref = TorchRefDiff(man["source"]["checkpoint"])
    ort = RefDiffPredictor(fp32, cache_dir=None, parser=None)
    prepared = []
    for img, own in zip(imgs, exprs):
        state = ort.encode(img)
        res = [ort.predict(e, state=state) for e in own[:max(ks)]]
        prepared.append((img, [(r.expression, r.proposals.full(), r.target_token, r.parsed) for r in res]))
    rows = []
    for k in ks:
        totals = []
        for it in range(warmup + iters):
            img, calls = prepared[it % len(prepared)]
            t0 = time.perf_counter()
            with torch.no_grad():
                for j in range(k):
                    text, props, token, p = calls[j % len(calls)]
                    ref(img, text, props, token, p.target_phrase, p.directions)
            if it >= warmup:
                totals.append((time.perf_counter() - t0) * 1e3)
        rows.append({"k": k, "latency_ms": latency_stats(totals), "stages_ms": {},
                     "note": "text + UNet + scoring only (proposals from the FP32 runtime)"})
    return {"rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bundle": man["source"]["checkpoint"]}


def bench_refdiff(bundle: str | Path, backends: list[str] | None = None, ks: tuple[int, ...] = (1, 4, 16),
                  iters: int = 3, warmup: int = 1, threads: int = 2, images: str | Path | None = None,
                  size: int | None = None, workdir: str | Path | None = None, calib_n: int = 16,
                  timeout_s: int = 1800, progress: bool = True) -> dict:
    """The result document (rows per backend x K, see the module docstring)."""
    backends = list(backends or DEFAULT_BACKENDS)
    bad = [b for b in backends if b not in REFDIFF_BACKENDS]
    if bad or iters < 1 or not ks or min(ks) < 1:
        raise ValueError(f"unknown Ref-Diff backend(s) {bad} (choose from {list(REFDIFF_BACKENDS)}), or iters "
                         f"{iters} < 1, or K {list(ks)} not >= 1")
    bundle = Path(bundle)
    name = f"refdiff/{bundle.name}"
    doc = new_document("pipeline", {"bundle": str(bundle), "method": "refdiff", "k": list(ks), "iters": iters,
                                    "warmup": warmup, "threads": threads, "backends": backends,
                                    "images": str(images) if images else "ToyWorld refer", "size": size,
                                    "baseline": backends[0]})
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgeseg-bench-refdiff-")
    work = Path(workdir) if workdir else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for b in backends:
            reason, got = _child(b, bundle, list(ks), iters, warmup, threads, images, size, work, calib_n, timeout_s)
            if progress:
                print(f"bench {name} {b}: " + (f"skipped ({reason})" if reason else "done"), file=sys.stderr)
            if reason:
                doc["rows"].append(make_row(name, b, 1, skipped=reason, extra={"k": None}))
                continue
            p50 = {r["k"]: r["latency_ms"]["p50_ms"] for r in got["rows"]}
            slope = (p50[max(p50)] - p50[min(p50)]) / (max(p50) - min(p50)) if len(p50) > 1 else None
            for r in got["rows"]:
                doc["rows"].append(make_row(
                    f"{name} K={r['k']}", b, 1, latency_ms=r["latency_ms"], stages_ms=r["stages_ms"],
                    memory={"peak_rss_mb": round(got["peak_rss_mb"], 1)},
                    extra={"k": r["k"], "per_extra_expression_ms": slope, "input_size": size or "bundle",
                           "ran": got["bundle"], **({"note": r["note"]} if "note" in r else {})}))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return doc


def _child(backend: str, bundle: Path, ks: list[int], iters: int, warmup: int, threads: int, images, size,
           work: Path, calib_n: int, timeout_s: int) -> tuple[str | None, dict | None]:
    """Run one backend in a subprocess: (skip reason or None, its result)."""
    if backend == "ort-cuda-fp16":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)", None
    if backend.startswith("torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install 'edgeseg[export]')", None
    args = json.dumps([backend, str(bundle), ks, iters, warmup, threads, str(images) if images else None, size,
                       str(work), calib_n])
    code = ("import json,sys; from edgeseg.export.bench.refdiff_pipeline import run_backend; "
            "print('\\n@@' + json.dumps(run_backend(*json.loads(sys.argv[1]))))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s} s", None
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}", None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last[:240]}", None
    return None, json.loads(proc.stdout.rsplit("\n@@", 1)[1])
