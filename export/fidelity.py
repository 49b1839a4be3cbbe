"""Fidelity of FP16 / INT8 bundles: task-level agreement with FP32 PyTorch on ToyWorld, and polygraphy
comparisons of each ONNX graph against its FP32 source under ONNX Runtime.

Task-level metrics (``task_agreement``):
- segmenters (``lseg``): fraction of pixels whose runtime label equals FP32 PyTorch's, on the ``generalized``
  ToyWorld split (all 8 shapes + 6 stuff classes, the hardest label set), plus the bundle's mIoU there;
- ``clip``: zero-shot shape naming of single objects: fraction of scenes where the bundle names the same
  shape as FP32 PyTorch.
Bars (``AGREEMENT_BARS``, ORT CPU): FP16 >= 0.98, INT8 >= 0.95.
"""

from __future__ import annotations

import json

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.runtime.bundle import MANIFEST, Bundle
from edgeseg.runtime.fileio import sha256_file

OIOU_CHANGE_BARS = {"fp32": 0.001, "fp16": 0.01, "int8": 0.03, "int8dyn": 0.03}  # refdiff: |oIoU - oIoU FP32|
AGREEMENT_BARS = {"fp32": 0.999, "fp16": 0.98, "int8": 0.95, "int8dyn": 0.95}
COSINE_BARS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "int8dyn": 0.99}  # per component output, vs FP32 PyTorch
POLYGRAPHY_TOL = {"fp32": (1e-4, 1e-4), "fp16": (2e-3, 2e-2), "int8": (5e-2, 2e-1), "int8dyn": (5e-2, 2e-1)}  # (atol, rtol) on medians


def _as_json(value: object) -> object:
    """``value`` as a manifest read back from JSON holds it (tuples become lists)."""
    return json.loads(json.dumps(value))


def ensure_built(bundle_dir: str | Path, precision: str, progress: bool = True) -> Path:
    """The ``precision`` build of an FP32 bundle: ``bundle_dir`` itself if it already is one, the default
    output folder if it was built from this exact FP32 manifest with today's recipes and the default
    calibration, else built now (ORT CPU backend, default calibration)."""
    from edgeseg.export.build.builder import build_bundle, default_out, precision_recipe
    from edgeseg.export.build.quantize import is_default_calibration

    b = Bundle(bundle_dir)
    have = b.manifest.get("precision", "fp32")
    if have == precision:
        return b.path
    if have != "fp32":
        raise ValueError(f"{b.path} is a {have} build; pass the FP32 bundle it came from to verify {precision}")
    out = default_out(b.path, precision, "ort-cpu")
    if precision != "fp32" and (out / MANIFEST).is_file():
        built = Bundle(out)
        same_source = built.manifest.get("build", {}).get("source_manifest_sha256") == sha256_file(b.path / MANIFEST)
        same_recipe = all(c.get("recipe") == _as_json(precision_recipe(precision, b.component(n)))
                          for n, c in built.components.items())  # as the manifest holds it: lists, not tuples
        cal = built.manifest["build"].get("calibration")
        same_calibration = precision != "int8" or is_default_calibration(cal)
        if same_source and same_recipe and same_calibration:
            return out
    return build_bundle(b.path, precision, "ort-cpu", out, progress=progress)


@dataclass
class TaskAgreement:
    method: str
    precision: str
    metric: str
    agreement: float
    bar: float
    n: int
    miou: float | None = None
    extra: dict = field(default_factory=dict)  # refdiff: oIoU of both bundles, its change and the bar on it

    @property
    def ok(self) -> bool:
        change_ok = abs(self.extra.get("oiou_change", 0.0)) <= self.extra.get("oiou_change_bar", float("inf"))
        return self.agreement >= self.bar and change_ok

    def summary(self) -> str:
        s = f"task agreement ({self.metric}, n={self.n}): {self.agreement:.4f}  bar {self.bar}  " \
            f"{'ok' if self.ok else 'BELOW BAR'}"
        if "oiou_change" in self.extra:
            e = self.extra
            s += f"  oIoU {e['oiou']:.4f} vs FP32 {e['oiou_fp32']:.4f} (change {e['oiou_change']:+.4f}, bar " \
                 f"{e['oiou_change_bar']})"
        return s + (f"  mIoU={self.miou:.4f}" if self.miou is not None else "")

    def to_dict(self) -> dict:
        return dict(asdict(self), ok=self.ok)


def task_agreement(bundle_dir: str | Path, n: int = 100, seed: int = 0, progress: bool = True) -> TaskAgreement:
    b = Bundle(bundle_dir)
    precision = b.manifest.get("precision", "fp32")
    checkpoint = b.manifest["source"]["checkpoint"]
    from edgeseg.export.evaluation.segmentation import eval_method
    from edgeseg.methods import METHODS

    spec = METHODS.get(b.method)
    if spec is not None and spec.torch_reference_path:  # segmentation methods (post-processing on)
        res = eval_method(b.method, b.path, "generalized", n, seed, cache_dir=None, compare_torch=checkpoint,
                          progress=progress)
        return TaskAgreement(b.method, precision, "label-map agreement with FP32 PyTorch, generalized split",
                             float(res.torch_agreement), AGREEMENT_BARS[precision], n, res.miou)
    if b.method == "clip":
        return _clip_agreement(b, checkpoint, n, seed, precision)
    if b.method == "refdiff":
        return refdiff_agreement(b, n, seed, progress)
    raise ValueError(f"no task-level metric for method {b.method!r}")


def _clip_agreement(b: Bundle, checkpoint: str, n: int, seed: int, precision: str) -> TaskAgreement:
    import torch

    from edgeseg.runtime.images import preprocess
    from edgeseg.runtime.text import TextEncoder
    from edgeseg.train.clip import load_clip
    from edgeseg.train.data.toyworld import SHAPES
    from edgeseg.train.train_clip import images_to_tensor, make_pool

    model, _ = load_clip(checkpoint)
    prep = b.preprocessing
    pool = [s for s in make_pool("all", n, seed, prep["image_size"][0], max_objects=1, min_scale=0.3) if s.objects]
    encoder = TextEncoder(b, cache_dir=None)
    text = encoder.embed(list(SHAPES))
    img = np.concatenate([b.run("clip_image", {"image": preprocess(s.image, prep)})["image_embeds"] for s in pool])
    ours = (img @ text.T).argmax(1)
    with torch.no_grad():
        ids = torch.from_numpy(encoder.tokenizer(list(SHAPES)))
        t = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
        x = images_to_tensor(np.stack([s.image for s in pool]), prep["mean"], prep["std"])
        v = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        ref = (v @ t.T).argmax(1).numpy()
    return TaskAgreement("clip", precision, "zero-shot shape naming agreement with FP32 PyTorch",
                         float((ours == ref).mean()), AGREEMENT_BARS[precision], len(pool))


def refdiff_agreement(b: Bundle, n: int = 100, seed: int = 0, progress: bool = True) -> TaskAgreement:
    """Ref-Diff: mean IoU of the chosen mask against the FP32 bundle's (which the parity tests hold to FP32
    PyTorch) on ``n`` ToyWorld referring samples, and the oIoU of both against the ground truth (parser-free
    rule: no spaCy needed)."""
    from tqdm import tqdm

    from edgeseg.runtime.refdiff import RefDiffPredictor
    from edgeseg.runtime.refdiff_scores import ReferMetrics, intersection_union
    from edgeseg.train.data.refer import ReferWorld
    from edgeseg.train.data.toyworld import ToyWorldConfig

    precision = b.manifest.get("precision", "fp32")
    src = b.manifest.get("build", {}).get("source_bundle", str(b.path))
    ours, ref = (RefDiffPredictor(x, cache_dir=None, parser=None) for x in (b, src))
    world = ReferWorld(seed, ToyWorldConfig(size=ours.config["vae_preprocessing"]["image_size"][0]))
    ious, m_ours, m_ref = [], ReferMetrics(), ReferMetrics()
    for i in tqdm(range(n), desc=f"refdiff {precision} vs fp32", disable=not progress):
        sample = world[i]
        a, r = (p.segment(sample.scene.image, sample.expression.text).mask for p in (ours, ref))
        inter, union = intersection_union(a, r)
        ious.append(inter / union if union else 1.0)
        m_ours.update(a, sample.target_mask)
        m_ref.update(r, sample.target_mask)
    o, o32 = m_ours.to_dict()["oIoU"], m_ref.to_dict()["oIoU"]
    extra = {"oiou": o, "oiou_fp32": o32, "oiou_change": o - o32, "oiou_change_bar": OIOU_CHANGE_BARS[precision],
             "same_choice": float(np.mean([v >= 0.999 for v in ious])), "min_iou": float(np.min(ious))}
    return TaskAgreement("refdiff", precision, "chosen-mask IoU with the FP32 bundle, ToyWorld refer",
                         float(np.mean(ious)), AGREEMENT_BARS[precision], n, None, extra)


@dataclass
class PolyRow:
    component: str
    output: str
    median_abs: float
    max_abs: float
    passed: bool


def polygraphy_compare(fp32_dir: str | Path, other_dir: str | Path, iterations: int = 4) -> list[PolyRow]:
    """Each component of ``other_dir`` against the same component of ``fp32_dir``, both in ONNX Runtime CPU
    through polygraphy's ``Comparator`` (inputs: task data for ``image`` / ``input_ids``, polygraphy's
    ``DataLoader`` at the spec's opt shapes otherwise); pass/fail on the median error with
    ``POLYGRAPHY_TOL`` of the precision."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, DataLoader

    try:  # polygraphy >= 0.50; older releases (TensorRT 10.3 era) only have CompareFunc.simple
        from polygraphy.comparator import SimpleCompareFunc as compare_func
    except ImportError:
        from polygraphy.comparator import CompareFunc

        compare_func = CompareFunc.simple
    from polygraphy.common import TensorMetadata
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # its per-iteration INFO lines drown the table

    from edgeseg.export.build.quantize import calibration_set, component_feeds

    ref, other = Bundle(fp32_dir, provider="ort-cpu"), Bundle(other_dir, provider="ort-cpu")
    precision = other.manifest.get("precision", "fp32")
    atol, rtol = POLYGRAPHY_TOL[precision]
    calib = calibration_set(iterations, seed=77_001, size=ref.preprocessing["image_size"][0])
    rows = []
    for name, comp in other.components.items():
        names = [t["name"] for t in comp["inputs"]]
        if names in (["image"], ["input_ids"]):
            feeds = list(component_feeds(comp, ref.manifest, ref.path, calib))[:iterations]
        else:
            meta = TensorMetadata()
            for t in comp["inputs"]:
                meta.add(t["name"], np.dtype(t["dtype"]), tuple(t.get("opt") or t["shape"]))
            feeds = DataLoader(iterations=iterations, input_metadata=meta)
        # The runtime's own ONNX Runtime sessions: checked against the manifest, with its FP16-on-CPU workaround.
        runners = [OnnxrtRunner(ref.session(name).inference_session, name=f"{name}-fp32"),
                   OnnxrtRunner(other.session(name).inference_session, name=f"{name}-{precision}")]
        results = Comparator.run(runners, data_loader=feeds)
        acc = Comparator.compare_accuracy(results, compare_func=compare_func(
            atol=atol, rtol=rtol, check_error_stat="median"))
        for iters in acc[0].values():  # AccuracyResults: one AccuracyResult per compare_func
            for out in comp["outputs"]:
                res = [it[out["name"]] for it in iters]
                rows.append(PolyRow(name, out["name"], max(float(r.median_absdiff) for r in res),
                                    max(float(r.max_absdiff) for r in res), all(bool(r) for r in res)))
    return rows


def format_poly(rows: list[PolyRow]) -> str:
    lines = [f"{'component':<14} {'output':<14} {'median-abs':>11} {'max-abs':>10}  polygraphy", "-" * 64]
    lines += [f"{r.component:<14} {r.output:<14} {r.median_abs:>11.2e} {r.max_abs:>10.2e}  "
              f"{'PASSED' if r.passed else 'FAILED'}" for r in rows]
    return "\n".join(lines)
