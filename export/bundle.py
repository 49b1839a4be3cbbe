"""Checkpoint -> bundle: one ONNX file per component, tokenizer.json and the manifest the runtime trusts.

A bundle folder is written under a temporary name and renamed into place when complete, so a failed or
interrupted export never leaves a half-written bundle where the runtime would load it. Every file of the bundle
is named by the export (``<component>.onnx``, ``<component>.onnx.data`` for a graph over protobuf's 2 GB,
``tokenizer.json``) and listed in the manifest with its sha256, which the runtime checks on load.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeseg import __version__
from edgeseg.methods import get_method
from edgeseg.runtime.fileio import sha256_file, staged_dir
from edgeseg.runtime.integrity import check_name
from edgeseg.train.checkpoint import resolve_checkpoint

from edgeseg.export import clip_image, clip_text, lseg_encoder, lseg_head
from edgeseg.export import ifseg_encoder, ifseg_head
from edgeseg.export import tcl_encoder, tcl_head
from edgeseg.export import clip_masked, sam_decoder, sam_encoder, sd_text, unet_attn, vae_encoder
from edgeseg.export import clip_hard, sam_masks
from edgeseg.export.build.external import finalize
from edgeseg.export.spec import ComponentSpec
from edgeseg.export.tokenizer import build_clip_tokenizer_json

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "edgeseg-bundle", 1
COMPONENTS = {  # every exportable component: name -> module holding its wrapper and spec
    clip_text.NAME: clip_text,
    clip_image.NAME: clip_image,
    lseg_encoder.NAME: lseg_encoder,
    lseg_head.NAME: lseg_head,
    ifseg_encoder.NAME: ifseg_encoder,
    ifseg_head.NAME: ifseg_head,
    tcl_encoder.NAME: tcl_encoder,
    tcl_head.NAME: tcl_head,
    sd_text.NAME: sd_text,
    vae_encoder.NAME: vae_encoder,
    unet_attn.NAME: unet_attn,
    sam_encoder.NAME: sam_encoder,
    sam_decoder.NAME: sam_decoder,
    sam_masks.NAME: sam_masks,
    clip_masked.NAME: clip_masked,
    clip_hard.NAME: clip_hard,
}


def build_components(method: str, checkpoint: str | Path) -> tuple[dict[str, tuple[nn.Module, ComponentSpec]], dict]:
    """Torch wrappers + specs of every component of ``method``: shared by export and verify."""
    return get_method(method).assembler()(checkpoint)


def example_inputs(name: str, spec: ComponentSpec, which: str = "opt", batch: int | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs for export and parity: valid token ids for text, unit-norm embeddings for the LSeg head; a
    component module with its own ``example_inputs`` (prompts, masks, timesteps) gives its own."""
    module = COMPONENTS.get(name)
    if module is not None and hasattr(module, "example_inputs"):
        return tuple(module.example_inputs(spec, which, batch, seed))
    g = torch.Generator().manual_seed(seed)
    if name == clip_text.NAME:
        shape = getattr(spec.inputs[0], which)
        return (clip_text.example_ids(shape[1], batch or shape[0]),)
    xs = list(spec.example_inputs(which, g))
    if batch is not None:
        xs = [x[:1].expand(batch, *x.shape[1:]).clone() if x.dim() == 4 else x for x in xs]
    if name in (lseg_head.NAME, ifseg_head.NAME, tcl_head.NAME):
        xs = [torch.nn.functional.normalize(x, dim=1 if x.dim() == 4 else -1) for x in xs]
    return tuple(xs)


def export_component(wrapper: nn.Module, spec: ComponentSpec, path: Path, external: bool | None = None) -> list[str]:
    """Export one component to ``path``; returns its external-data file names ([] for a single-file graph).

    The graph is exported in a scratch folder of its own (the TorchScript exporter writes a graph over protobuf's
    2 GB as one loose file per tensor, named after the tensor), brought to the bundle layout there (one
    ``<path>.data`` file, :func:`edgeseg.export.build.external.finalize`; ``external=True`` forces it for a small
    graph) and moved beside ``path``. Small graphs stay single files, byte for byte what the exporter wrote."""
    path = Path(path)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".export"))
    try:
        staged = scratch / path.name
        _export_graph(wrapper, spec, staged)
        data = finalize(staged, external)
        for f in (path.name, *data):
            os.replace(scratch / f, path.parent / f)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return data


def _export_graph(wrapper: nn.Module, spec: ComponentSpec, path: Path) -> None:
    """Legacy TorchScript exporter (fast; the MHA fast path is switched off so ``nn.MultiheadAttention``
    traces into plain ops), dynamic axes from the spec, example batch of 2 so no axis freezes at 1."""
    wrapper.eval()
    name = path.stem
    module = COMPONENTS.get(name)
    if module is not None and hasattr(module, "export"):  # a component that needs its own exporter settings
        module.export(wrapper, spec, path)
        return
    args = example_inputs(name, spec, "opt", batch=2)
    with torch.no_grad(), _mha_fastpath(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
                          opset_version=spec.opset, dynamo=False, do_constant_folding=True)


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import open_clip

    return {"edgeseg": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def export_bundle(method: str, checkpoint: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Export every component of ``method`` from ``checkpoint`` into the bundle folder ``out``."""
    from tqdm import tqdm

    out = Path(out)
    comps, info = build_components(method, checkpoint)
    ckpt_name = str(checkpoint)
    if "source" in info:  # a method assembled from several models names them itself
        source = info["source"]
    else:
        try:
            folder = resolve_checkpoint(checkpoint)
            source = {"checkpoint": str(folder), "weights_sha256": sha256_file(folder / "model.safetensors")}
        except FileNotFoundError:
            path = ckpt_name.partition(":")[2]
            source = {"checkpoint": ckpt_name, "weights_sha256": sha256_file(path) if path else None}
    with staged_dir(out) as tmp:
        manifest_components = {}
        for name, (wrapper, spec) in tqdm(comps.items(), desc=f"export {method}", disable=not progress):
            file = tmp / check_name(f"{name}.onnx", f"component {name!r}")
            data = export_component(wrapper, spec, file)
            ext = {"external_data": [{"file": f, "sha256": sha256_file(tmp / f)} for f in data]} if data else {}
            manifest_components[name] = {"file": file.name, "sha256": sha256_file(file), **ext, "precision": "fp32",
                                         "exporter": getattr(COMPONENTS.get(name), "EXPORTER", "torch.onnx (TorchScript)"),
                                         **spec.to_dict()}
        tok = build_clip_tokenizer_json(tmp / "tokenizer.json", info["context_length"])
        tok["sha256"] = sha256_file(tmp / "tokenizer.json")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": out.name, "method": method,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source, "versions": _versions(), "preprocessing": info["preprocessing"],
            "tokenizer": tok, **{key: dict(tok, **facts) for key, facts in info.get("extra_tokenizers", {}).items()},
            "method_config": info["method_config"],
            "checkpoint_metrics": info.get("metrics", {}), "components": manifest_components,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
