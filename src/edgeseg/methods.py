"""The method registry: one :class:`MethodSpec` per method, read by the CLI, export, build, eval, bench and
the test fixtures. Adding a method is the method's own files plus one entry in :data:`METHODS`
(CONTRIBUTING.md, "How to add a method").

    from edgeseg.methods import METHODS, get_method
    spec = get_method("lseg")
    components, info = spec.assembler()("lseg_toy")   # torch: export wrappers + specs (edgeseg.export)
    predictor = spec.predictor()(bundle)               # numpy: the runtime predictor (edgeseg.runtime)

Torch-free by construction: every part is named by a ``"module:attribute"`` string and imported only when
asked for, so the runtime, the CLI's parser and the torch-free build read the registry without torch, and the
runtime never imports the export code it names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal


def resolve(target: str) -> Any:
    """``"package.module:attribute"`` -> the attribute, imported on demand."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class MethodSpec:
    """One method. ``kind``: ``segmentation`` (labels -> label map; ``predict(labels)``), ``referring``
    (expression -> mask; ``predict(expression)``) or ``embedding`` (CLIP towers only, no predictor)."""

    name: str
    help: str  # one line, shown by ``edgeseg export --help`` and friends
    kind: Literal["segmentation", "referring", "embedding"]
    components: tuple[str, ...]  # component names (edgeseg.export.bundle.COMPONENTS) in the bundle
    assembler_path: str  # checkpoint -> ({component: (torch wrapper, ComponentSpec)}, manifest info)
    checkpoint_help: str  # what the export's CHECKPOINT argument takes
    test_checkpoint: str  # the committed checkpoint (or config) the test fixtures export
    loader_path: str | None = None  # checkpoint folder -> the PyTorch model(s) (edgeseg.train)
    predictor_path: str | None = None  # the runtime predictor class (edgeseg.runtime)
    evaluate_path: str | None = None  # the ToyWorld evaluation (edgeseg.export.evaluation)
    torch_reference_path: str | None = None  # (checkpoint, labels) -> (image -> label map) in PyTorch
    precision_suite: bool = False  # FP16 / INT8 builds held to the fidelity bars by the precision tests

    def assembler(self) -> Any:
        return resolve(self.assembler_path)

    def loader(self) -> Any:
        return resolve(self._need(self.loader_path, "a checkpoint loader"))

    def predictor(self) -> Any:
        return resolve(self._need(self.predictor_path, "a runtime predictor"))

    def evaluate(self) -> Any:
        return resolve(self._need(self.evaluate_path, "an evaluation"))

    def torch_reference(self) -> Any:
        return resolve(self._need(self.torch_reference_path, "a PyTorch reference"))

    def _need(self, path: str | None, what: str) -> str:
        if path is None:
            raise ValueError(f"method {self.name!r} has no {what}")
        return path


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec(
        "lseg", "LSeg: dense pixel embeddings matched to label embeddings", "segmentation",
        ("clip_text", "lseg_encoder", "lseg_head"), "edgeseg.export.lseg_bundle:lseg_components",
        "an LSeg checkpoint folder or bundled name (lseg_toy), or lang-seg's architecture lseg_vitl16_384 / "
        "lseg_vitb32_384 / lseg_tiny_official (random) or lseg_vitl16_384:/path/demo_e200.ckpt", "lseg_toy",
        loader_path="edgeseg.train.train_lseg:load_lseg", predictor_path="edgeseg.runtime.lseg:LSegPredictor",
        evaluate_path="edgeseg.export.evaluation.segmentation:eval_method",
        torch_reference_path="edgeseg.export.evaluation.torch_references:lseg_torch_predictor",
        precision_suite=True),
    MethodSpec(
        "clip", "CLIP image and text towers (open_clip)", "embedding",
        ("clip_text", "clip_image"), "edgeseg.export.clip_bundle:clip_components",
        "a CLIP checkpoint folder or bundled name (clip_toy), ViT-B-16 (random init) or "
        "ViT-B-16:/path/to/open_clip.pt", "clip_toy",
        loader_path="edgeseg.train.clip:load_clip", precision_suite=True),
    MethodSpec(
        "tcl", "TCL: text-grounded masks learned from captions (PAMR refinement)", "segmentation",
        ("clip_text", "tcl_encoder", "tcl_head"), "edgeseg.export.tcl_bundle:tcl_components",
        "a TCL checkpoint folder or bundled name (tcl_toy), ViT-B-16[:/path/to/open_clip.pt], or TCL's architecture "
        "tcl_vitb16 / tcl_tiny_official (random) or tcl_vitb16:/path/tcl.pth[,/path/ViT-B-16.pt]", "tcl_toy",
        loader_path="edgeseg.train.train_tcl:load_tcl", predictor_path="edgeseg.runtime.tcl:TCLPredictor",
        evaluate_path="edgeseg.export.evaluation.segmentation:eval_method",
        torch_reference_path="edgeseg.export.evaluation.torch_references:tcl_torch_predictor",
        precision_suite=True),
    MethodSpec(
        "ifseg", "IFSeg: segmentation learned from category words alone (kNN refinement)", "segmentation",
        ("clip_text", "ifseg_encoder", "ifseg_head"), "edgeseg.export.ifseg_bundle:ifseg_components",
        "an IFSeg checkpoint folder or bundled name (ifseg_toy), or ViT-B-16[:/path/to/open_clip.pt]", "ifseg_toy",
        loader_path="edgeseg.train.train_ifseg:load_ifseg", predictor_path="edgeseg.runtime.ifseg:IFSegPredictor",
        evaluate_path="edgeseg.export.evaluation.segmentation:eval_method",
        torch_reference_path="edgeseg.export.evaluation.torch_references:ifseg_torch_predictor",
        precision_suite=True),
    MethodSpec(
        "refdiff", "Ref-Diff: zero-shot referring segmentation (SD cross-attention + SAM + CLIP)", "referring",
        ("sd_text", "vae_encoder", "unet_attn", "sam_encoder", "sam_decoder", "sam_masks", "clip_text",
         "clip_masked", "clip_hard"),
        "edgeseg.export.refdiff_bundle:refdiff_components",
        "a config name (toy, full-vit-b, full-vit-h, released-vit-h) or a JSON file naming local weights "
        "(see edgeseg.export.refdiff_bundle)", "toy",
        predictor_path="edgeseg.runtime.refdiff:RefDiffPredictor",
        evaluate_path="edgeseg.export.evaluation.refdiff:eval_refdiff"),
)}


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; a clear error listing the methods there are."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {sorted(METHODS)}")
    return METHODS[name]


def methods_of_kind(kind: str) -> list[str]:
    """Registered method names of one kind, in registry order."""
    return [m.name for m in METHODS.values() if m.kind == kind]
