"""``edgeseg verify BUNDLE [--precision P]``: every component of a bundle against its FP32 PyTorch source
(max-abs, cosine). FP32 bundles must match to ``atol``; FP16 / INT8 builds are held to the cosine bars of
``fidelity.COSINE_BARS`` (their max-abs is reported, not bounded) and to the task-level agreement bars."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeseg.runtime.bundle import Bundle

from edgeseg.export.bundle import build_components, example_inputs


@dataclass
class ParityRow:
    component: str
    output: str
    shape: tuple[int, ...]
    max_abs: float
    cosine: float  # cosine similarity of the flattened outputs
    ok: bool


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, cosine) of two outputs; equal outputs have cosine 1, all-zero ones included (a
    stability score of 0 for every mask is a match, not an orthogonal pair)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a64.shape == b64.shape and np.array_equal(a64, b64):
        return 0.0, 1.0
    cos = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))
    return float(np.abs(a64 - b64).max()), cos


def parity_batches(spec, batches: tuple[int, ...] = (1, 3)) -> list[int]:
    """``batches`` clamped to the largest leading-axis size the manifest ``spec`` admits, sorted, no repeats (a
    component whose profile stops at 2 runs 1 and 2)."""
    bound = min((t.max[0] for t in spec.inputs if t.max and isinstance(t.shape[0], str)), default=max(batches))
    return sorted({min(b, bound) for b in batches})


def verify_bundle(bundle_dir: str | Path, checkpoint: str | Path | None = None, atol: float = 1e-3,
                  min_cosine: float | None = None, batches: tuple[int, ...] = (1, 3)) -> list[ParityRow]:
    """Run each component in PyTorch and in the bundle on the same inputs at several batch sizes (each clamped to
    the largest batch the component's manifest admits, so a component whose profile stops at 2 runs 1 and 2)."""
    from edgeseg.export.fidelity import COSINE_BARS

    bundle = Bundle(bundle_dir)
    precision = bundle.manifest.get("precision", "fp32")
    min_cosine = COSINE_BARS[precision] if min_cosine is None else min_cosine
    atol = atol if precision == "fp32" else float("inf")
    source = checkpoint or bundle.manifest["source"]["checkpoint"]
    comps, _ = build_components(bundle.method, source)
    rows = []
    for name, (wrapper, spec) in comps.items():
        if name not in bundle.components:
            continue
        for b in parity_batches(bundle.spec(name), batches):
            inputs = example_inputs(name, spec, "opt", batch=b, seed=b)
            with torch.no_grad():
                ref = wrapper.eval()(*inputs)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = bundle.run(name, {t.name: x.numpy() for t, x in zip(spec.inputs, inputs)})
            for t, r in zip(spec.outputs, ref):
                mx, cos = compare(r.numpy(), got[t.name])
                rows.append(ParityRow(name, t.name, tuple(got[t.name].shape), mx, cos, mx <= atol and cos >= min_cosine))
    return rows


def format_table(rows: list[ParityRow]) -> str:
    lines = [f"{'component':<14} {'output':<14} {'shape':<22} {'max-abs':>10} {'cosine':>10}  ok",
             "-" * 78]
    for r in rows:
        lines.append(f"{r.component:<14} {r.output:<14} {str(list(r.shape)):<22} {r.max_abs:>10.2e} "
                     f"{r.cosine:>10.7f}  {'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
