"""INT8 calibration feeds recorded from the pipeline itself, spooled to disk and streamed back.

A multi-component method (Ref-Diff: ``sd_text``, ``vae_encoder``, ``unet_attn``, ``sam_encoder``,
``sam_decoder``, ``clip_text``, ``clip_masked``, ``clip_hard``) cannot be calibrated from images and token ids
alone: the UNet sees latents noised at the pipeline's DDIM timesteps with the SD text states (uncond + cond), the
SAM decoder sees the automatic-mask point grid on real image embeddings, CLIP sees real proposals (``clip_hard``:
the released hard crops, ``(x * P) * M`` cut to each proposal's box at shortest side = the CLIP size, so its
feeds come in many H x W shapes and stride 1 unless some coincide). So the FP32
bundle's own runtime predictor is run on the calibration images / texts, and every ``Bundle.run`` call is
recorded (:class:`FeedSpool`): each component gets exactly the feeds it gets in deployment, whatever its input
names are (the recipe follows I/O changes of the export without an edit here).

Memory is bounded twice: the spool keeps at most ``cap`` feeds per component on disk (reservoir sampling,
seeded), and :class:`SpoolReader` streams them back in strides of ``stride`` samples, which ONNX Runtime's
calibrator collects and merges into its histograms one stride at a time (``CalibStridedMinMax``), instead of
holding every activation of every sample at once. :func:`estimate_peak` prints the estimate before starting.
Torch-free (numpy, onnx, onnxruntime, the runtime).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ACTIVATION_BUDGET = 2 << 30  # bytes of activations held per calibration stride (8 GB device: weights + 2 GiB)
FIT_SHARE = 0.85  # share of the available memory a calibration estimate may take (it can fall short by 11 %+)
PIPELINE_METHODS = ("refdiff",)  # methods calibrated by recording their pipeline (others: by input names)


class FeedSpool:
    """``FeedSpool(root, cap=256, seed=0)``: feeds (input name -> array) per component as ``.npz`` files
    under ``root/<component>/``; at most ``cap`` kept per component (a uniform reservoir sample of the calls)."""

    def __init__(self, root: str | Path, cap: int = 256, seed: int = 0):
        if cap < 1:
            raise ValueError(f"spool cap must be >= 1, got {cap}")
        self.root, self.cap = Path(root), cap
        self.seen: dict[str, int] = {}
        self.shapes: dict[str, dict[int, tuple]] = {}  # component -> slot -> the feeds' shapes
        self._rng = np.random.default_rng(seed)

    def add(self, component: str, feeds: dict[str, np.ndarray]) -> None:
        """Record one call's feeds (written to disk now, never held)."""
        j = self.seen.get(component, 0)
        self.seen[component] = j + 1
        slot = j if j < self.cap else int(self._rng.integers(0, j + 1))
        if slot >= self.cap:
            return
        folder = self.root / component
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{slot:05d}.npz", **{k: np.ascontiguousarray(v) for k, v in feeds.items()})
        self.shapes.setdefault(component, {})[slot] = tuple(sorted((k, v.shape) for k, v in feeds.items()))

    def files(self, component: str) -> list[Path]:
        """The spooled feed files of a component, grouped by feed shapes (then slot order)."""
        folder = self.root / component
        shapes = self.shapes.get(component, {})
        files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
        return sorted(files, key=lambda f: (repr(shapes.get(int(f.stem), ())), f.name))

    def groups(self, component: str) -> list[int]:
        """Sizes of the runs of same-shape feeds in :meth:`files` order."""
        sizes: dict[str, int] = {}
        for shape in self.shapes.get(component, {}).values():
            sizes[repr(shape)] = sizes.get(repr(shape), 0) + 1
        return [sizes[k] for k in sorted(sizes)]

    def reader(self, component: str) -> "SpoolReader":
        return SpoolReader(self.files(component), self.groups(component))

    def summary(self) -> dict[str, dict[str, int]]:
        """component -> {"calls": pipeline calls seen, "kept": feeds spooled}."""
        return {c: {"calls": n, "kept": len(self.files(c))} for c, n in sorted(self.seen.items())}


class SpoolReader:
    """A calibration data reader (onnxruntime's ``CalibrationDataReader`` protocol plus ``__len__`` and
    ``set_range`` for strided collection) over spooled feed files, loading one file at a time."""

    def __init__(self, files: list[Path], groups: list[int] | None = None):
        self.files, self.count = list(files), 0
        self.groups = list(groups) if groups else [len(self.files)]  # same-shape runs: a stride divides each
        self._range = (0, len(self.files))
        self._it: Iterator[Path] = iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for f in self.files:
            with np.load(f) as z:
                yield {k: z[k] for k in z.files}

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = (start_index, end_index)
        self._it = iter(self.files[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        f = next(self._it, None)
        if f is None:
            return None
        self.count += 1
        with np.load(f) as z:
            return {k: z[k] for k in z.files}

    def rewind(self) -> None:
        self.set_range(0, len(self.files))


def record_runs(bundle: Any, spool: FeedSpool, skip: frozenset[str] = frozenset()) -> Callable[[], None]:
    """Wrap ``bundle.run`` so every call's feeds go to ``spool`` (except components in ``skip``: nothing of
    theirs is quantized); returns the function that unwraps it."""
    original = bundle.run

    def run(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in skip:
            spool.add(name, feeds)
        return original(name, feeds)

    bundle.run = run
    return lambda: setattr(bundle, "run", original)


def capture_refdiff(bundle_dir: str | Path, calib: Any, spool: FeedSpool, texts_per_image: int = 2,
                    progress: bool = True) -> dict[str, dict[str, int]]:
    """Run the FP32 Ref-Diff pipeline (``RefDiffPredictor``, parser-free, no caches) on every calibration image
    with ``texts_per_image`` expressions (the image's own ToyWorld expressions when ``calib.image_texts`` has
    them, else the calibration texts in turn), recording every component's feeds. Returns the spool summary."""
    from tqdm import tqdm

    from edgeseg.runtime.bundle import Bundle
    from edgeseg.runtime.refdiff import RefDiffPredictor

    bundle = Bundle(bundle_dir, provider="ort-cpu")
    # sam_masks (INT8-excluded whole) takes N x g^2 x C image tokens: 268 MB a call at full size, not spooled
    skip = frozenset(n for n, c in bundle.components.items()
                     if list(c.get("precision_hints", {}).get("int8_exclude", [])) == [".*"])
    unwrap = record_runs(bundle, spool, skip)
    try:
        # the released preset (its default) feeds clip_hard the real hard crops; a bundle exported before
        # clip_hard existed runs its hard branch through clip_masked's crops instead (hard_resize="clip_input")
        hard = "shortest_side" if "clip_hard" in bundle.components else "clip_input"
        pred = RefDiffPredictor(bundle, cache_dir=None, parser=None, preset="released", hard_resize=hard)
        pairs = getattr(calib, "image_texts", None) or []
        texts = list(calib.texts) or ["the object"]
        for i, img in enumerate(tqdm(calib.images, desc="calibration: Ref-Diff pipeline", disable=not progress)):
            own = [t for t in (pairs[i] if i < len(pairs) else []) if t][:texts_per_image]
            exprs = own or [texts[(i * texts_per_image + k) % len(texts)] for k in range(texts_per_image)]
            state = pred.set_image(img)
            pred.predict_many(exprs, state=state)
    finally:
        unwrap()
    return spool.summary()


def pipeline_spool(method: str, bundle_dir: str | Path, calib: Any, cap: int,
                   progress: bool = True) -> tuple[FeedSpool, dict]:
    """A filled :class:`FeedSpool` (in a temporary folder; :func:`drop_spool` removes it) for a method of
    :data:`PIPELINE_METHODS`, with its summary."""
    if method not in PIPELINE_METHODS:
        raise ValueError(f"no pipeline capture for method {method!r}; known: {list(PIPELINE_METHODS)}")
    spool = FeedSpool(tempfile.mkdtemp(prefix="edgeseg-calib-"), cap=cap)
    try:
        summary = capture_refdiff(bundle_dir, calib, spool, progress=progress)
    except BaseException:
        drop_spool(spool)
        raise
    return spool, summary


def drop_spool(spool: FeedSpool) -> None:
    shutil.rmtree(spool.root, ignore_errors=True)


def activation_bytes(path: str | Path, feeds: dict[str, np.ndarray]) -> int:
    """Estimated bytes of every float tensor of one run of the graph at ``path`` on ``feeds`` (shape inference
    on the graph without its weights; unknown dims counted as the feed's first dim). An upper bound of what
    ONNX Runtime's calibrator keeps per sample."""
    from edgeseg.export.build.calib_chunked import tensor_sizes

    try:
        model, sizes = tensor_sizes(path, feeds)
    except Exception:  # noqa: BLE001 - an estimate only: fall back to the feed sizes
        return sum(int(v.nbytes) for v in feeds.values()) * 64
    inputs = {i.name for i in model.graph.input}
    return sum(n for t, n in sizes.items() if t not in inputs)


def weight_bytes(path: str | Path) -> int:
    """Bytes of a graph file plus its external data files beside it."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data*"))


def plan_stride(groups: list[int], per_sample: int, budget: int = ACTIVATION_BUDGET) -> int:
    """The largest stride (samples collected at once) within ``budget`` that divides every size in ``groups``
    (runs of same-shape feeds: ONNX Runtime stacks one stride into one array, and its strided collection
    needs a divisor of the total); >= 1."""
    g = int(np.gcd.reduce([max(int(n), 1) for n in groups])) if groups else 1
    most = max(1, min(g, budget // max(per_sample, 1)))
    return max(s for s in range(1, most + 1) if g % s == 0)


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), or None where the file is missing."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def describe(est: dict[str, int]) -> str:
    """What :func:`estimate_peak`'s figure is made of, in words."""
    gb = 1 << 30
    if est.get("chunked"):
        return (f"weights {est['weights'] / gb:.1f} GB x 3 while quantizing; {est['per_sample'] / gb:.1f} GB of "
                f"activations a sample, calibrated in chunks of <= {est['budget'] / gb:.1f} GB")
    return (f"weights {est['weights'] / gb:.1f} GB x 3 + {est['stride']} x {est['per_sample'] / gb:.1f} GB of "
            f"activations a sample")


def check_fits(name: str, est: dict[str, int], available: int | None) -> None:
    """Refuse (one-line ValueError) to calibrate ``name`` when :func:`estimate_peak`'s ``est`` exceeds the
    ``available`` bytes: a process killed for memory after minutes of calibration leaves the user nothing but
    the kill. Measured: the full-size SD UNet at 512 px (one uncond + cond sample), calibrated whole, was
    estimated at 21.8 GB and killed at 24.2 GB RSS, so the estimate may fall short by >= 11 %: it must fit in
    :data:`FIT_SHARE` of what is available."""
    if available is None or est["peak"] <= FIT_SHARE * available:
        return
    gb = 1 << 30
    raise ValueError(f"INT8 calibration of {name} needs about {est['peak'] / gb:.1f} GB ({describe(est)}), "
                     f"more than {FIT_SHARE:.0%} of the {available / gb:.1f} GB available: build on a machine "
                     f"with more memory, or build --precision fp16 (no calibration)")


def estimate_peak(path: str | Path, reader: SpoolReader, budget: int = ACTIVATION_BUDGET) -> dict[str, int]:
    """{"weights", "per_sample", "stride", "peak", "chunked", "budget"} in bytes for calibrating ``path`` on
    ``reader``'s feeds. Whole graph (one sample's activations fit ``budget``): the model is held about three
    times (source, augmented copy, session) plus one stride of activations. Else chunked
    (:mod:`.calib_chunked`): the weights once plus a chunk and the tensors kept across chunks (<= 2 budgets)
    while calibrating, the model about three times while onnxruntime quantizes it."""
    first = next(iter(reader), None)
    per = activation_bytes(path, first) if first is not None else 0
    weights = weight_bytes(path)
    if per > budget:
        return {"weights": weights, "per_sample": per, "stride": 1, "chunked": True, "budget": budget,
                "peak": max(weights + 2 * budget, 3 * weights)}
    stride = plan_stride(reader.groups, per, budget)
    return {"weights": weights, "per_sample": per, "stride": stride, "chunked": False, "budget": budget,
            "peak": 3 * weights + stride * per}
