"""``edgeseg bench pipeline | text-cache | runtime``: whole pipelines per stage, the text cache, and the
runtime's own footprint (import time, install size).

- pipeline: ``set_image`` + ``predict(labels)`` of the method's runtime predictor, per backend (the bundle's
  FP32/FP16/INT8 builds on ONNX Runtime CPU/CUDA, TensorRT engines), stages from the predictor's own
  ``timings_ms``; PyTorch eager runs the same stages where a reference pipeline exists (:data:`TORCH_PIPELINES`).
  Text embeddings are cached on both sides (labels are encoded once, in warm-up): the text cache on its own
  is ``text-cache``.
- text-cache: encoding labels (miss) vs a memory hit vs a disk hit (fresh process memory, warm disk cache).
- runtime: ``import edgeseg.runtime`` in fresh interpreters (and that it pulls no torch), and the install size
  of the ``runtime`` extra from the installed distributions' file lists.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.export.bench.results import latency_stats, make_row, new_document
from edgeseg.export.bench.components import BACKENDS, default_backends, unavailable_reason, variant_dir


def _scenes(size: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld("all", seed, ToyWorldConfig(size=size))
    return [world[i].image for i in range(n)]


def _default_labels() -> list[str]:
    from edgeseg.train.data.toyworld import SHAPES, STUFF

    return list(SHAPES) + list(STUFF)


def _lseg_torch_pipeline(manifest: dict, device: str, precision: str, threads: int) -> Callable:
    """PyTorch eager LSeg with the runtime's stages: (image, labels) -> (label_map, stage ms)."""
    import torch

    from edgeseg.runtime.images import preprocess, resize_maps
    from edgeseg.train.train_lseg import load_lseg, text_embeddings

    torch.set_num_threads(threads)
    model, clip, cfg = load_lseg(manifest["source"]["checkpoint"])
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(device, dtype).eval()
    memo: dict[tuple, torch.Tensor] = {}

    @torch.inference_mode()
    def run(image: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict]:
        clock = StageClock(device)
        x = torch.from_numpy(preprocess(image, manifest["preprocessing"])).to(device, dtype)
        clock.mark("preprocess")
        pix = model.encode(x)
        clock.mark("encoder")
        key = tuple(labels)
        if key not in memo:
            memo[key] = text_embeddings(clip, labels, cfg["tokenizer"]["context_length"],
                                        cfg["text_encoder"]["template"]).to(device, dtype)
        clock.mark("text")
        logits = model.head_logits(pix, memo[key])
        clock.mark("head")
        probs = torch.softmax(logits.float(), 1)[0].cpu().numpy()
        label_map = resize_maps(probs, image.shape[:2]).argmax(0).astype(np.int32)
        clock.mark("postprocess")
        return label_map, clock.elapsed_ms()

    return run


class StageClock:
    """Stage boundaries: CUDA events on a GPU (read once, after one synchronize at the end, so the clock
    does not serialize the stream), ``perf_counter`` on the CPU."""

    def __init__(self, device: str):
        import torch

        self.cuda = device == "cuda"
        self.names: list[str] = []
        self.marks: list = [self._now(torch)]

    def _now(self, torch):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def mark(self, stage: str) -> None:
        import torch

        self.names.append(stage)
        self.marks.append(self._now(torch))

    def elapsed_ms(self) -> dict[str, float]:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return {n: a.elapsed_time(b) for n, a, b in zip(self.names, self.marks, self.marks[1:])}
        return {n: (b - a) * 1e3 for n, a, b in zip(self.names, self.marks, self.marks[1:])}


TORCH_PIPELINES = {"lseg": _lseg_torch_pipeline}  # method -> factory(manifest, device, precision, threads)


def _runtime_pipeline(bundle_dir: Path, provider: str, threads: int, cache: Path) -> Callable:
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.predictors import load_predictor

    pred = load_predictor(Bundle(bundle_dir, provider=provider, threads=threads), cache_dir=cache)

    def run(image: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict]:
        pred.set_image(image)
        res = pred.predict(labels)
        return res.label_map, dict(res.timings_ms)

    return run


def bench_pipeline(bundle: str | Path, backends: list[str] | None = None, labels: list[str] | None = None,
                   iters: int = 20, warmup: int = 3, threads: int = 2, progress: bool = True) -> dict:
    """Per-stage latency of a method's pipeline on ToyWorld scenes, every backend interleaved."""
    from tqdm import tqdm

    from edgeseg.runtime.bundle import Bundle

    bundle = Path(bundle)
    manifest = Bundle(bundle, check_hashes=False).manifest
    if manifest.get("precision", "fp32") != "fp32":
        raise ValueError(f"{bundle} is a {manifest['precision']} build; pass the FP32 bundle (its builds are "
                         f"made or reused as BUNDLE_<precision>)")
    method, labels = manifest["method"], labels or _default_labels()
    backends = backends or default_backends()
    bad = [b for b in backends if b not in BACKENDS]
    if bad or iters < 1:
        raise ValueError(f"unknown backend(s) {bad} (choose from {list(BACKENDS)}) or iters {iters} < 1")
    name = f"{method}/{bundle.name}"
    baseline = "torch-cuda-fp16" if "torch-cuda-fp16" in backends else backends[0]
    doc = new_document("pipeline", {"bundle": str(bundle), "method": method, "labels": labels, "iters": iters,
                                    "warmup": warmup, "threads": threads, "backends": backends,
                                    "baseline": baseline})
    images = _scenes(manifest["preprocessing"]["image_size"][0])
    fns, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-cache-") as cache:
        for bname in backends:
            b = BACKENDS[bname]
            reason = unavailable_reason(b)
            if reason is None and b.engine == "torch":
                if method not in TORCH_PIPELINES:
                    reason = f"no PyTorch reference pipeline for method {method!r}"
                elif b.compile:
                    reason = "torch.compile is benchmarked per component (edgeseg bench components)"
            if reason is None:
                try:
                    fns[bname] = (TORCH_PIPELINES[method](manifest, b.device, b.precision, threads)
                                  if b.engine == "torch" else
                                  _runtime_pipeline(variant_dir(bundle, b.precision, b.engine, progress), b.provider,
                                                    threads, Path(cache)))
                except Exception as e:  # reported, never replaced by another backend
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if reason:
                skipped[bname] = reason
        total: dict[str, list[float]] = {b: [] for b in fns}
        stages: dict[str, list[dict]] = {b: [] for b in fns}
        maps: dict[str, list[np.ndarray]] = {b: [] for b in fns}
        for it in tqdm(range(warmup + iters), desc=f"bench pipeline {name}", disable=not progress):
            img = images[it % len(images)]
            for bname, fn in fns.items():
                t = time.perf_counter()
                label_map, st = fn(img, labels)
                dt = (time.perf_counter() - t) * 1e3
                if it >= warmup:
                    total[bname].append(dt)
                    stages[bname].append(st)
                    if len(maps[bname]) < len(images):
                        maps[bname].append(label_map)
    ref = next((maps[b] for b in ("torch-cpu-fp32", "ort-cpu-fp32") if b in maps), None)
    for bname in backends:
        if bname in skipped:
            doc["rows"].append(make_row(name, bname, 1, skipped=skipped[bname]))
            continue
        st = {k: float(np.median([s[k] for s in stages[bname]])) for k in stages[bname][0]}
        agree = (float(np.mean([(a == b).mean() for a, b in zip(maps[bname], ref)])) if ref is not None else None)
        doc["rows"].append(make_row(name, bname, 1, latency_ms=latency_stats(total[bname]), stages_ms=st,
                                    fidelity={"label_map_agreement": agree},
                                    extra={"precision": BACKENDS[bname].precision, "labels": len(labels)}))
    return doc


def bench_text_cache(bundle: str | Path, labels: list[str] | None = None, iters: int = 20, threads: int = 2) -> dict:
    """Embedding ``labels``: encode (cache miss) vs memory hit vs disk hit, ONNX Runtime CPU."""
    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.text import TextEncoder

    labels = labels or _default_labels()
    b = Bundle(bundle, provider="ort-cpu", threads=threads)
    template = b.manifest.get("method_config", {}).get("template", "{}")
    doc = new_document("text-cache", {"bundle": str(bundle), "labels": labels, "iters": iters, "threads": threads,
                                      "baseline": "encode"})
    times: dict[str, list[float]] = {"encode": [], "memory-hit": [], "disk-hit": []}
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-text-") as d:
        miss = TextEncoder(b, cache_dir=None)
        hit = TextEncoder(b, cache_dir=d)
        hit.embed(labels, template)  # fills memory and disk
        for it in range(iters + 1):
            miss.cache.clear_memory()
            fresh = TextEncoder(b, cache_dir=d)  # empty memory, warm disk
            for mode, enc in (("encode", miss), ("memory-hit", hit), ("disk-hit", fresh)):
                t = time.perf_counter()
                enc.embed(labels, template)
                if it:  # the first round warms up the session
                    times[mode].append((time.perf_counter() - t) * 1e3)
    name = f"text/{len(labels)} labels"
    for mode, ms in times.items():
        doc["rows"].append(make_row(name, mode, len(labels), latency_ms=latency_stats(ms),
                                    extra={"bundle": Path(bundle).name}))
    return doc


_IMPORT_PROBE = ("import time, sys; t = time.perf_counter(); import edgeseg.runtime; dt = time.perf_counter() - t; "
                 "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
                 "print(dt * 1e3, 'torch' in sys.modules, int(hwm[0].split()[1]) if hwm else -1)")


def runtime_install_size(extra: str = "runtime") -> dict:
    """MB on disk of every distribution ``edgeseg[extra]`` pulls in (recursively), from their RECORD files."""
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement

    def deps(dist_name: str, extras: tuple[str, ...] = ("",)) -> list[str]:
        out = []
        for text in md.requires(dist_name) or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
                out.append(req.name)
        return out

    seen: dict[str, float] = {}
    todo = deps("edgeseg", (extra,))
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen or key == "edgeseg":
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # not installed here (an optional or platform-specific dependency)
        size = sum((f.size or 0) for f in (dist.files or []))
        seen[key] = size / 2**20
        todo += deps(name)
    runtime_dir = Path(__file__).resolve().parents[2] / "runtime"
    own = sum(p.stat().st_size for p in runtime_dir.rglob("*.py")) / 2**20
    return {"distributions_mb": dict(sorted(seen.items())), "edgeseg_runtime_mb": own,
            "total_mb": own + sum(seen.values())}


def bench_runtime(iters: int = 10) -> dict:
    """``import edgeseg.runtime`` wall time in fresh interpreters (and that it imports no torch), peak RSS
    after the import, the runtime extra's install size, and torch's for scale."""
    import importlib.metadata as md

    doc = new_document("runtime", {"iters": iters})
    ms, rss, torch_loaded = [], [], False
    for _ in range(iters + 1):
        r = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True)
        dt, has_torch, hwm = r.stdout.split()
        ms.append(float(dt))
        rss.append(int(hwm) / 1024)
        torch_loaded |= has_torch == "True"
    size = runtime_install_size()
    try:
        torch_mb = sum((f.size or 0) for f in (md.distribution("torch").files or [])) / 2**20
    except md.PackageNotFoundError:
        torch_mb = None
    doc["rows"].append(make_row("import edgeseg.runtime", "python", 1, latency_ms=latency_stats(ms[1:]),
                                memory={"peak_rss_mb": float(np.median(rss))},
                                extra={"imports_torch": torch_loaded, "install_size": size,
                                       "torch_install_mb": torch_mb}))
    return doc
