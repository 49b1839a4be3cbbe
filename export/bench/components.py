"""``edgeseg bench components``: one exported component across backends, batch sizes and precisions.

For each case (component of a method + checkpoint) the FP32 bundle is exported once into a work folder and
FP16 / INT8 / TensorRT variants are built only for the backends asked for. Inputs are realistic: ToyWorld
scenes through the bundle's preprocessing for ``image``, tokenized ToyWorld captions for ``input_ids``.
All available backends are timed in interleaved rounds (warm-up first) on the same inputs, so machine noise
hits them alike; a backend that cannot run here is a row with ``skipped`` and the reason. Peak host RSS is
measured per backend in a fresh subprocess (:mod:`edgeseg.export.bench.memory`); FLOPs are counted from the
FP32 graph (:mod:`edgeseg.export.bench.flops`); fidelity is the cosine of each backend's output to PyTorch FP32.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeseg.methods import METHODS
from edgeseg.runtime.backends import BACKENDS as RUNTIME_BACKENDS

from edgeseg.export.bench.results import device_peak_gflops, latency_stats, make_row, new_document

# component -> the method whose bundle holds it, from the method registry (the plain CLIP towers first, so
# clip_text is benchmarked from a CLIP bundle; Ref-Diff's components have no bench case yet); a case is
# "<component>/<checkpoint>", the checkpoint anything `edgeseg export <method>` takes (lseg_toy, clip_toy,
# ViT-B-16 for random weights, ViT-B-16:/path/to/weights.pt)
COMPONENT_METHOD: dict[str, str] = {}
for _m in sorted(METHODS.values(), key=lambda m: m.kind != "embedding"):
    if _m.kind != "referring":
        for _c in _m.components:
            COMPONENT_METHOD.setdefault(_c, _m.name)
CASES = {  # the named cases: name -> (method, checkpoint, component)
    "lseg_encoder/toy-tiny": ("lseg", "lseg_toy", "lseg_encoder"),
    "lseg_head/toy-tiny": ("lseg", "lseg_toy", "lseg_head"),
    "clip_image/toy-tiny": ("clip", "clip_toy", "clip_image"),
    "clip_text/toy-tiny": ("clip", "clip_toy", "clip_text"),
    "clip_image/ViT-B-16": ("clip", "ViT-B-16", "clip_image"),
    "clip_text/ViT-B-16": ("clip", "ViT-B-16", "clip_text"),
    "tcl_encoder/toy-tiny": ("tcl", "tcl_toy", "tcl_encoder"),
    "ifseg_encoder/toy-tiny": ("ifseg", "ifseg_toy", "ifseg_encoder"),
    "ifseg_head/toy-tiny": ("ifseg", "ifseg_toy", "ifseg_head"),
}


@dataclass(frozen=True)
class Backend:
    """One bench backend. Runtime rows are ``<runtime backend>-<precision>`` (``ort-cpu-int8``, ``trt-fp16``)
    with ``provider`` the runtime backend name (``edgeseg.runtime.backends.BACKENDS``); PyTorch reference rows
    are ``torch-<device>-<precision | compile...>`` with no provider."""

    name: str
    engine: str  # "torch" | "ort" | "trt": the Session kind of ``provider`` for runtime rows
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8" | "int8dyn"
    provider: str = ""  # runtime backend: "ort-cpu" | "ort-cuda" | "ort-trt" | "trt"
    compile: bool = False


def _runtime(backend: str, precision: str) -> Backend:
    """The bench row of a runtime backend at a precision, named ``<backend>-<precision>``."""
    info = RUNTIME_BACKENDS[backend]
    return Backend(f"{backend}-{precision}", info.session, info.device, precision, backend)


BACKENDS = {b.name: b for b in (
    Backend("torch-cpu-fp32", "torch", "cpu", "fp32"),
    Backend("torch-cpu-compile", "torch", "cpu", "fp32", compile=True),
    Backend("torch-cuda-fp32", "torch", "cuda", "fp32"),
    Backend("torch-cuda-fp16", "torch", "cuda", "fp16"),
    Backend("torch-cuda-compile-fp16", "torch", "cuda", "fp16", compile=True),
    _runtime("ort-cpu", "fp32"),
    _runtime("ort-cpu", "fp16"),
    _runtime("ort-cpu", "int8"),
    _runtime("ort-cpu", "int8dyn"),
    _runtime("ort-cuda", "fp32"),
    _runtime("ort-cuda", "fp16"),
    _runtime("ort-cuda", "int8"),
    _runtime("ort-trt", "fp16"),
    _runtime("ort-trt", "int8"),
    _runtime("trt", "fp16"),
    _runtime("trt", "int8"),
)}
CPU_DEFAULT = ["torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-int8", "ort-cpu-int8dyn"]
GPU_DEFAULT = ["torch-cuda-fp32", "torch-cuda-fp16", "ort-cuda-fp32", "ort-cuda-fp16", "ort-cuda-int8",
               "trt-fp16", "trt-int8"]


def parse_case(case: str) -> tuple[str, str, str]:
    """(method, checkpoint, component) of a named case or of ``<component>/<checkpoint>``."""
    if case in CASES:
        return CASES[case]
    component, _, ckpt = case.partition("/")
    if component not in COMPONENT_METHOD or not ckpt:
        raise ValueError(f"unknown bench case {case!r}: use a named case {list(CASES)} or <component>/<checkpoint> "
                         f"with a component of {sorted(COMPONENT_METHOD)}, e.g. clip_image/ViT-B-16:/path/weights.pt")
    return COMPONENT_METHOD[component], ckpt, component


def default_backends() -> list[str]:
    try:
        import torch

        return GPU_DEFAULT if torch.cuda.is_available() else CPU_DEFAULT
    except ImportError:
        return CPU_DEFAULT


def unavailable_reason(b: Backend) -> str | None:
    """Why ``b`` cannot run on this machine, or None."""
    import onnxruntime as ort

    if b.device == "cuda":
        import torch

        if b.engine == "torch" and not torch.cuda.is_available():
            return "no CUDA device"
    if b.engine == "ort":
        want = RUNTIME_BACKENDS[b.provider].ort_provider
        if want not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no {want} (install onnxruntime-gpu on a CUDA machine)"
    if b.engine == "trt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed (pip install tensorrt, or JetPack on Jetson)"
    return None


def case_inputs(case: str, spec, manifest: dict, bundle_dir: Path, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for one case at ``batch``: ToyWorld images / captions where the input is image / input_ids."""
    from edgeseg.runtime.images import preprocess
    from edgeseg.runtime.tokenizer import ClipTokenizer
    from edgeseg.train.data.toyworld import ToyWorld

    from edgeseg.export.bundle import example_inputs

    world = ToyWorld("all", seed)
    names = [t.name for t in spec.inputs]
    if names == ["image"]:
        return {"image": np.concatenate([preprocess(world[i].image, manifest["preprocessing"]) for i in range(batch)])}
    if names == ["input_ids"]:
        tok = ClipTokenizer.from_manifest(manifest["tokenizer"], bundle_dir)
        return {"input_ids": tok([world[i].caption for i in range(batch)])}
    xs = example_inputs(parse_case(case)[2], spec, "opt", batch=batch, seed=seed)
    return {t.name: x.numpy() for t, x in zip(spec.inputs, xs)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).mean())


class CaseRunner:
    """Builds bundle variants lazily and returns one callable per backend (feeds -> first output, numpy)."""

    def __init__(self, case: str, workdir: Path, threads: int, progress: bool = True):
        from edgeseg.export.bundle import build_components, export_bundle

        self.case, self.threads, self.progress = case, threads, progress
        self.method, self.ckpt, self.component = parse_case(case)
        comps, _ = build_components(self.method, self.ckpt)
        self.wrapper, self.spec = comps[self.component]
        self.workdir = workdir
        self.fp32 = workdir / f"{self.method}_{self.ckpt.replace(':', '_').replace('/', '_')}"
        if not (self.fp32 / "manifest.json").is_file():
            t0 = time.perf_counter()
            export_bundle(self.method, self.ckpt, self.fp32, progress=progress)
            self.export_seconds = time.perf_counter() - t0
        else:
            self.export_seconds = None
        from edgeseg.runtime.bundle import Bundle

        self.manifest = Bundle(self.fp32, check_hashes=False).manifest
        self.build_seconds: dict[str, float] = {}  # per variant: building it, or checking and reusing it
        self._variants: dict[tuple[str, bool], Path] = {}

    def bundle_dir(self, b: Backend) -> Path:
        """The bundle ``b`` runs (built on first use, then reused for the memory run)."""
        key = (b.precision, b.engine == "trt")
        if key not in self._variants:
            t0 = time.perf_counter()
            self._variants[key] = variant_dir(self.fp32, b.precision, b.engine, self.progress)
            if self._variants[key] != self.fp32:
                self.build_seconds[self._variants[key].name] = round(time.perf_counter() - t0, 2)
        return self._variants[key]

    def callable(self, b: Backend) -> tuple[Callable[[dict], np.ndarray], Callable[[], None]]:
        """(run(feeds) -> first output, synchronize)."""
        if b.engine == "torch":
            return self._torch_callable(b)
        from edgeseg.runtime.bundle import Bundle

        bundle = Bundle(self.bundle_dir(b), provider=b.provider, threads=self.threads)
        first = self.spec.outputs[0].name
        bundle.session(self.component)  # load now, not inside the timed loop
        return (lambda feeds: bundle.run(self.component, feeds)[first]), (lambda: None)

    def _torch_callable(self, b: Backend):
        import torch

        forward = torch_forward(self.wrapper, self.spec, b, self.threads, copy_model=True)
        sync = torch.cuda.synchronize if b.device == "cuda" else (lambda: None)
        return (lambda feeds: forward(feeds).float().cpu().numpy()), sync


def torch_forward(wrapper, spec, b: Backend, threads: int, copy_model: bool = False) -> Callable:
    """feeds (numpy, by input name) -> the first output tensor of ``wrapper`` on ``b``'s device, dtype and
    compile setting (shared by the timed runs and the memory worker)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.float16 if b.precision == "fp16" else torch.float32
    model = (copy.deepcopy(wrapper) if copy_model else wrapper).eval().to(b.device).to(dtype)
    if b.compile:
        model = torch.compile(model)

    def run(feeds: dict):
        xs = [torch.from_numpy(feeds[t.name]).to(b.device) for t in spec.inputs]
        xs = [x.to(dtype) if x.is_floating_point() else x for x in xs]
        with torch.inference_mode():
            y = model(*xs)
        return y[0] if isinstance(y, (tuple, list)) else y

    return run


def variant_dir(fp32: Path, precision: str, engine: str, progress: bool = True) -> Path:
    """The build of FP32 bundle ``fp32`` that a backend runs: ONNX Runtime graphs through
    :func:`.fidelity.ensure_built` (reused while current), TensorRT engines built once into BUNDLE_<precision>_trt."""
    from edgeseg.export.build.builder import build_bundle, default_out
    from edgeseg.export.fidelity import ensure_built

    if engine != "trt":
        return ensure_built(fp32, precision, progress=progress)
    out = default_out(fp32, precision, "trt")
    return out if (out / "manifest.json").is_file() else build_bundle(fp32, precision, "trt", out, progress=progress)


def bench_components(cases: list[str], backends: list[str] | None = None, batches: tuple[int, ...] = (1,),
                     iters: int = 20, warmup: int = 3, threads: int = 2, memory: bool = True,
                     workdir: str | Path | None = None, progress: bool = True) -> dict:
    """Benchmark every case x backend x batch; returns the result document (see :mod:`.bench`)."""
    from tqdm import tqdm

    from edgeseg.export.bench.memory import measure_memory
    from edgeseg.export.bench.flops import count_flops

    backends = backends or default_backends()
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    for c in cases:
        parse_case(c)
    if iters < 1 or warmup < 0 or any(b < 1 for b in batches):
        raise ValueError(f"need iters >= 1, warmup >= 0, batch sizes >= 1; got {iters}, {warmup}, {batches}")
    baseline = "torch-cuda-fp16" if "torch-cuda-fp16" in backends else backends[0]
    doc = new_document("components", {"cases": cases, "backends": backends, "batches": list(batches),
                                      "iters": iters, "warmup": warmup, "threads": threads, "memory": memory,
                                      "baseline": baseline})
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        for case in cases:
            runner = CaseRunner(case, work, threads, progress)
            fns, skipped = {}, {}
            for name in backends:
                b = BACKENDS[name]
                reason = unavailable_reason(b)
                if reason is None:
                    try:
                        fns[name] = runner.callable(b)
                    except Exception as e:  # a backend that fails to load is reported, never silently replaced
                        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if reason:
                    skipped[name] = reason
            for batch in batches:
                feeds = case_inputs(case, runner.spec, runner.manifest, runner.fp32, batch)
                ref_out = runner._torch_callable(BACKENDS["torch-cpu-fp32"])[0](feeds)
                times: dict[str, list[float]] = {n: [] for n in fns}
                first: dict[str, float] = {}
                outs: dict[str, np.ndarray] = {}
                for it in tqdm(range(warmup + iters), desc=f"{case} b{batch}", disable=not progress):
                    for name, (fn, sync) in fns.items():
                        t = time.perf_counter()
                        y = fn(feeds)
                        sync()
                        dt = (time.perf_counter() - t) * 1e3
                        if it >= warmup:
                            times[name].append(dt)
                        elif it == 0:
                            first[name] = dt  # cold call: lazy init, torch.compile, engine load
                        outs[name] = y
                shapes = {k: tuple(v.shape) for k, v in feeds.items()}
                fl = count_flops(runner.fp32 / runner.manifest["components"][runner.component]["file"], shapes)
                for name in backends:
                    if name in skipped:
                        doc["rows"].append(make_row(case, name, batch, skipped=skipped[name]))
                        continue
                    b = BACKENDS[name]
                    lat = latency_stats(times[name])
                    peak = device_peak_gflops(doc["machine"], b.device, b.precision, threads)
                    frac = fl.total / (lat["p50_ms"] / 1e3) / (peak * 1e9) if peak and fl.total else None
                    mem = measure_memory(runner, b, feeds, threads) if memory else {}
                    doc["rows"].append(make_row(
                        case, name, batch, latency_ms=lat, memory=mem, flops=fl.to_dict(), fraction_of_peak=frac,
                        fidelity={"cosine_vs_torch_fp32": _cosine(outs[name], ref_out)},
                        extra={"input_shapes": {k: list(v) for k, v in shapes.items()}, "precision": b.precision,
                               "device": b.device, "peak_gflops": peak,
                               "first_call_ms": first.get(name)}))
            doc["settings"].setdefault("export_seconds", {})[case] = runner.export_seconds
            doc["settings"].setdefault("build_seconds", {}).update(runner.build_seconds)
    return doc
