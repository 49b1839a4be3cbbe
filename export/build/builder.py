"""``edgeseg build BUNDLE --precision fp32|fp16|int8 --backend ort-cpu|ort-cuda|ort-trt|trt``.

An FP32 bundle (from ``edgeseg export``) -> a new bundle whose ONNX graphs carry the precision (FP16 graph or
Q/DQ INT8, see ``precision`` and ``quantize``), linted for TensorRT 10.3 and 11, with the recipe, calibration
source and lint summary in its manifest. ``--backend trt`` also builds one TensorRT engine per component
(``trt_engines``) on this machine's GPU and records the engine-cache key; the ``ort-*`` backends are ONNX Runtime
execution providers that take the ONNX graphs as they are. Backend names: ``edgeseg.runtime.backends``
(``--backend tensorrt``, the old name of ``trt``, still works and warns). Output is written to a temporary
folder and renamed into place.

Containment: the source bundle is opened with :class:`~edgeseg.runtime.bundle.Bundle`, which refuses (before
anything is written) a manifest naming a file that is not a plain name inside the bundle folder; the build then
writes only under names it chooses inside its staging folder: ``<component>.onnx``, ``<component>.onnx.data``
(external data, one file, for graphs that had it or exceed 2 GB), ``<component>.plan``, ``tokenizer.json``.

INT8 calibration: a method of ``calib_pipeline.PIPELINE_METHODS`` (Ref-Diff) is calibrated on the feeds its
own FP32 runtime pipeline gives each component (recorded, spooled to disk, streamed back in strides, with the
estimated peak printed per component; a component whose one sample's activations exceed the budget, the
full-size SD UNet, is calibrated in graph chunks by ``calib_chunked.ChunkedCalibrator``); other methods on feeds
chosen by input names (``quantize.component_feeds``).

Torch-free (onnx + onnxruntime + the runtime), so it also runs on the target device. Two workflows for
TensorRT: build FP16/INT8 ONNX and engines in one go on the device, or convert on a workstation and pass the
converted bundle to ``--backend trt`` on the device with the same ``--precision`` (graphs are then copied
unchanged and only the engines are built).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path

from edgeseg.runtime.backends import BACKENDS, resolve_backend
from edgeseg.runtime.bundle import MANIFEST, Bundle
from edgeseg.runtime.integrity import check_name
from edgeseg.runtime.manifest import tokenizer_keys
from edgeseg.runtime.fileio import sha256_file, staged_dir

from edgeseg.export.build import calib_pipeline
from edgeseg.export.build.calib_pipeline import PIPELINE_METHODS, check_fits, drop_spool, estimate_peak, pipeline_spool
from edgeseg.export.build.external import copy_graph, finalize
from edgeseg.export.build.lint import TARGETS, lint_file
from edgeseg.export.build.precision import FP16_POLICY, PRECISIONS, STREAM_THRESHOLD, convert_fp16, recipe_hash
from edgeseg.export.build.quantize import (DEFAULT_CALIB_N, INT8_DYNAMIC_POLICY, INT8_POLICY, calibration_set, component_feeds,
                       quantize_int8, quantize_int8_dynamic)

TRT_BACKENDS = tuple(b.name for b in BACKENDS.values() if b.tensorrt)  # ort-trt, trt: lint errors stop these builds


def default_out(src: str | Path, precision: str, backend: str) -> Path:
    """``engines/lseg_toy`` -> ``engines/lseg_toy_fp16`` (``_fp16_trt`` for native TensorRT engines)."""
    src, backend = Path(src), resolve_backend(backend, "build")
    return src.with_name(f"{src.name}_{precision}" + ("_trt" if BACKENDS[backend].engines else ""))


def precision_recipe(precision: str, component: dict) -> dict:
    """The written recipe applied to one manifest component: the FP16 or INT8 policy plus the component's
    own precision hints (declared in its ComponentSpec, carried by the manifest)."""
    hints = component.get("precision_hints", {})
    if precision == "fp16":
        return {"precision": "fp16", "tool": "onnxruntime.transformers.float16",
                **dict(FP16_POLICY.to_dict(), fp32_outputs=list(hints.get("fp32_outputs", [])))}
    if precision == "int8":
        return {"precision": "int8", "tool": "onnxruntime.quantization.quantize_static (QDQ)",
                **INT8_POLICY.to_dict(), "exclude": list(hints.get("int8_exclude", []))}
    if precision == "int8dyn":
        return {"precision": "int8dyn", "tool": "onnxruntime.quantization.quantize_dynamic (MatMulInteger)",
                **INT8_DYNAMIC_POLICY.to_dict(), "exclude": list(hints.get("int8_exclude", []))}
    return {"precision": "fp32"}


def build_bundle(src: str | Path, precision: str = "fp16", backend: str = "ort-cpu", out: str | Path | None = None,
                 calib_n: int = DEFAULT_CALIB_N, calib_images: str | Path | None = None, calib_texts: str | Path | None = None,
                 lint_targets: tuple[str, ...] = tuple(TARGETS), trt_options: dict | None = None,
                 progress: bool = True, stream_threshold: int = STREAM_THRESHOLD) -> Path:
    """Build the ``precision`` / ``backend`` variant of the FP32 bundle ``src``; returns the new folder.
    ``backend``: a name of ``edgeseg.runtime.backends.BACKENDS`` (``tensorrt``, the old name of ``trt``, warns).
    ``stream_threshold``: FP16 conversion of a graph file this large (or with external data) runs tensor by
    tensor into one external-data file (``precision.convert_fp16``); lower it to force that path."""

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    backend = resolve_backend(backend, "build")  # UnknownBackendError (a ValueError) names the choices
    if precision == "int8dyn" and backend != "ort-cpu":
        raise ValueError(f"precision int8dyn (ONNX Runtime dynamic quantization, MatMulInteger) runs on the "
                         f"ort-cpu backend only, not {backend!r}: TensorRT cannot build it; use --precision int8 "
                         f"(Q/DQ) for {backend}")
    source = Bundle(src, provider="ort-cpu")  # checks the manifest and every file hash
    man = source.manifest
    have = man.get("precision", "fp32")
    convert = have != precision  # False: graphs copied unchanged (engines for a converted bundle)
    if have != "fp32" and convert:
        raise ValueError(f"{source.path} is already a {have} build; build {precision} from the FP32 bundle "
                         f"({man.get('build', {}).get('source_bundle', 'the export')})")
    out = Path(out) if out else default_out(source.path, precision, backend)
    if out.resolve() == source.path.resolve():
        raise ValueError(f"--out {out} is the source bundle; choose another folder")
    if BACKENDS[backend].engines:
        from edgeseg.export.build.trt_engines import require_tensorrt

        require_tensorrt()  # fail before any work when TensorRT is absent
    calib = calibration_set(calib_n, calib_images, calib_texts,
                            size=man["preprocessing"]["image_size"][0]) if precision == "int8" and convert else None
    spool = None
    if calib is not None and man.get("method") in PIPELINE_METHODS:  # feeds recorded from the FP32 pipeline
        spool, summary = pipeline_spool(man["method"], source.path, calib, cap=4 * calib_n, progress=progress)
        calib.source = dict(calib.source, pipeline={"method": man["method"], "components": summary})
    try:
        return _build(source, man, precision, backend, out, convert, have, calib, spool, lint_targets,
                      trt_options, progress, stream_threshold)
    finally:
        if spool is not None:
            drop_spool(spool)


def _int8_component(name: str, comp: dict, man: dict, source: Bundle, src_file: Path, dst_file: Path, calib,
                    spool, exclude: tuple[str, ...], external: bool, progress: bool) -> dict:
    """Quantize one component: from the pipeline spool (estimated peak printed; streamed in strides, or in
    graph chunks when one sample's activations exceed ``calib_pipeline.ACTIVATION_BUDGET``) when the pipeline
    ran it, else from feeds chosen by its input names."""
    if spool is None or not spool.files(name):
        return quantize_int8(src_file, dst_file, component_feeds(comp, man, source.path, calib), exclude=exclude,
                             external=external)
    reader = spool.reader(name)
    est = estimate_peak(src_file, reader, budget=calib_pipeline.ACTIVATION_BUDGET)
    mb = 1 << 20
    if progress:
        how = "in chunks" if est["chunked"] else f"stride {est['stride']}"
        print(f"calibrating {name}: {len(reader)} pipeline samples, {how}, estimated peak {est['peak'] / mb:.0f} MB "
              f"({calib_pipeline.describe(est)})", flush=True)
    check_fits(name, est, calib_pipeline.available_memory())  # one line now, not a kill after minutes
    info = {"calibration_stride": est["stride"], "estimated_peak_mb": round(est["peak"] / mb, 1)}
    if not est["chunked"]:
        return dict(quantize_int8(src_file, dst_file, reader, exclude=exclude, external=external,
                                  stride=est["stride"]), **info)
    from tqdm import tqdm

    from edgeseg.export.build.calib_chunked import ChunkedCalibrator

    cal = ChunkedCalibrator(src_file, INT8_POLICY.op_types, next(iter(reader)), est["budget"],
                            method=INT8_POLICY.calibrate_method)
    try:
        for feeds in tqdm(reader, total=len(reader), desc=f"calibrating {name} ({len(cal.chunks)} chunks)",
                          disable=not progress):
            cal.collect(feeds)
        with tempfile.TemporaryDirectory(prefix="edgeseg-ranges-") as tmp:
            ranges = cal.save(Path(tmp) / "ranges.json")
            cal.close()  # the chunks' weights go before onnxruntime loads the whole model to quantize it
            done = quantize_int8(src_file, dst_file, reader, exclude=exclude, external=external, ranges=ranges)
    finally:
        cal.close()
    return dict(done, calibration_samples=cal.samples, calibration_chunks=len(cal.chunks), **info)


def _build(source: Bundle, man: dict, precision: str, backend: str, out: Path, convert: bool, have: str, calib,
           spool, lint_targets: tuple[str, ...], trt_options: dict | None, progress: bool,
           stream_threshold: int = STREAM_THRESHOLD) -> Path:
    from tqdm import tqdm

    with staged_dir(out) as tmp:
        comps, lint_summary = {}, {}
        for name, comp in tqdm(source.components.items(), desc=f"build {precision}/{backend}", disable=not progress):
            view = source.entry(name)  # file names checked: plain, inside the source bundle, hashed
            src_file, dst_file = source.file(view.file), tmp / f"{name}.onnx"  # the build's own name
            external = bool(view.external_data)  # the converted graph keeps its weights in one data file
            recipe = comp.get("recipe") if not convert and have != "fp32" else precision_recipe(precision, comp)
            done = comp.get("converted", {})
            if not convert:
                copy_graph(src_file, dst_file, [e.file for e in view.external_data])
            elif precision == "fp16":
                rep = convert_fp16(src_file, dst_file, fp32_outputs=tuple(recipe["fp32_outputs"]), external=external,
                                   stream_threshold=stream_threshold)
                done = {"nodes": rep.nodes, "nodes_fp32": rep.nodes_fp32, "clipped_constants": rep.clipped_constants,
                        **({"notes": rep.notes} if rep.notes else {})}
            elif precision == "int8":
                done = _int8_component(name, comp, man, source, src_file, dst_file, calib, spool,
                                       tuple(recipe["exclude"]), external, progress)
            elif precision == "int8dyn":
                done = quantize_int8_dynamic(src_file, dst_file, exclude=tuple(recipe["exclude"]), external=external)
            data = finalize(dst_file)  # [] or ["<name>.onnx.data"]
            lint_summary[name] = _lint(dst_file, comp, lint_targets, strict=backend in TRT_BACKENDS)
            entry = {k: v for k, v in comp.items() if k not in ("engine", "external_data")}  # rebuilt, not carried
            entry.update(file=dst_file.name, sha256=sha256_file(dst_file), precision=precision, recipe=recipe,
                         converted=done, recipe_hash=recipe_hash(recipe))
            if data:
                entry["external_data"] = [{"file": f, "sha256": sha256_file(tmp / f)} for f in data]
            if BACKENDS[backend].engines:
                from edgeseg.export.build.trt_engines import build_engine

                entry["engine"] = build_engine(dst_file, entry, tmp, **(trt_options or {}))
            comps[name] = entry
        manifest = dict(man, name=out.name, precision=precision, backend=backend, components=comps,
                        **_copy_tokenizers(source, tmp))
        earlier = man.get("build", {})
        manifest["build"] = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_bundle": earlier.get("source_bundle", str(source.path)),
            "source_manifest_sha256": earlier.get("source_manifest_sha256", sha256_file(source.path / MANIFEST)),
            "calibration": calib.source if calib else earlier.get("calibration"), "lint": lint_summary,
            "command": f"edgeseg build {source.path} --precision {precision} --backend {backend} --out {out}",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _copy_tokenizers(source: Bundle, tmp: Path) -> dict[str, dict]:
    """Copy each tokenizer file the manifest names (checked and hashed by Bundle) as ``tokenizer.json`` (the
    ``tokenizer`` entry) or ``<key>.json``, one copy per distinct file; returns the updated manifest entries."""
    entries, copied = {}, {}
    for key in tokenizer_keys(source.manifest):
        facts = source.tokenizer_facts(key)
        if facts["file"] not in copied:
            dst = check_name(f"{key}.json", f"tokenizer entry {key!r}")  # keys are plain names (Manifest checks)
            shutil.copyfile(source.file(facts["file"]), tmp / dst)
            copied[facts["file"]] = dst
        entries[key] = dict(facts, file=copied[facts["file"]])
    return entries


def _lint(path: Path, comp: dict, targets: tuple[str, ...], strict: bool) -> dict:
    summary = {}
    for target in targets:
        issues = lint_file(path, target, spec=comp)
        errors = [i for i in issues if i.level == "error"]
        summary[target] = {"errors": len(errors), "warnings": len(issues) - len(errors)}
        if errors and strict:
            lines = "\n".join(f"  [{i.rule}] {i.node}: {i.message}" for i in errors[:10])
            raise ValueError(f"{path.name} fails the {target} lint with {len(errors)} error(s); TensorRT would "
                             f"refuse it:\n{lines}\n(run: edgeseg lint {path})")
    return summary
