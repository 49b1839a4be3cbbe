"""INT8 as explicit Q/DQ ONNX (onnxruntime ``quantize_static``), calibrated on task inputs. Never implicit.

INT8 policy (``INT8_POLICY``, written into every INT8 bundle's manifest):
- QDQ format: QuantizeLinear/DequantizeLinear pairs around the quantized ops. This is explicit quantization,
  the only INT8 path TensorRT 11 has and the one TensorRT 10.3 builds from the same file.
- int8 activations and int8 weights, both symmetric (zero point 0, which TensorRT requires); weights per
  output channel, activations per tensor; biases stay FP32 (TensorRT's DequantizeLinear takes no int32).
- Quantized: MatMul, Conv, Gemm nodes with a constant weight operand (where the compute is). Everything else
  stays FP32: LayerNorm, Softmax, GELU/Erf, residual Adds, Resize, reductions, the token-embedding Gather,
  Einsum (the LSeg head's cosine logits), ConvTranspose.
- Op-exclusion policy: MatMuls of two activations (attention scores Q.K^T and P.V) stay FP32
  (``weights_only``). Measured on the ToyWorld CLIP image tower (``benchmarks/int8_policy_study.py``: 200
  scenes, zero-shot shape naming vs FP32): quantizing them gave 0.77 agreement, keeping them FP32 0.955;
  keeping also the patch conv or the last block FP32 gave 0.965 (2 scenes of 200, within noise), so those
  stay quantized. A component adds node-name regexes through its spec's ``int8_exclude`` hint; the policy's
  ``exclude_patterns`` apply to every component.
- Calibration: Percentile (99.999th; 0.955 vs MinMax 0.950 in the study) over task inputs: ToyWorld scenes
  (``train`` split, a seed apart from every evaluation seed) and ToyWorld captions / class names / referring
  expressions for text towers, or a user's image folder and text file (:func:`calibration_set`). Ref-Diff's
  components are calibrated on what its FP32 pipeline feeds them (:mod:`.calib_pipeline`).
A component with no quantizable op (the LSeg head) is kept in FP32 and the manifest says so.

``int8dyn`` (ONNX Runtime CPU only, :func:`quantize_int8_dynamic`): int8 weights (per channel, symmetric) and
activations quantized per run (DynamicQuantizeLinear -> MatMulInteger, fused by ONNX Runtime into
DynamicQuantizeMatMul). No calibration. MatMuls and Gemms with a constant weight (attention MatMuls stay FP32,
Convs too: ConvInteger is slow on CPU). It exists for speed: ONNX Runtime's CPU provider runs a static Q/DQ MatMul as INT8 only
when its output is quantized too, so in a transformer half of the Q/DQ MatMuls (those followed by a bias Add
or Gemm) run as DequantizeLinear + FP32 MatMul, no faster than FP32 (measured on CLIP ViT-B/16). TensorRT
cannot build MatMulInteger: Q/DQ ``int8`` stays the portable INT8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeseg.export.build.external import copy_graph

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_CALIB_N = 64


@dataclass(frozen=True)
class Int8Policy:
    op_types: tuple[str, ...] = ("MatMul", "Conv", "Gemm")
    weights_only: bool = True  # skip MatMuls of two activations (attention Q.K^T and P.V)
    per_channel: bool = True
    symmetric: bool = True
    calibrate_method: str = "Percentile"  # MinMax | Entropy | Percentile (99.999th, ORT's default)
    exclude_patterns: tuple[str, ...] = ()  # regexes over node names, every component
    # 7-bit weights; None: on where the build CPU would saturate (x86 without VNNI, see cpu_saturates_int8)
    reduce_range: bool | None = None

    def resolved_reduce_range(self) -> bool:
        return cpu_saturates_int8() if self.reduce_range is None else bool(self.reduce_range)

    def to_dict(self) -> dict:
        return dict(asdict(self), reduce_range=self.resolved_reduce_range())


def cpu_saturates_int8(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ONNX Runtime's x86 INT8 GEMM on this CPU is prone to saturation: an x86 CPU without VNNI
    (``avx512_vnni``, ``avx_vnni`` or AMX), where the u8 x s8 kernels use VPMADDUBSW, whose 16-bit pair sums
    overflow for 8-bit weights (ONNX Runtime's quantization docs: use ``reduce_range`` there). Measured on an
    AMD EPYC with AVX2 only: the toy CLIP's INT8 zero-shot agreement 0.825 with 8-bit weights. False where
    the file is missing or the CPU is not x86 (ARM's sdot kernels do not saturate)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    if not flags or "sse2" not in flags:  # not x86
        return False
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


INT8_POLICY = Int8Policy()
INT8_DYNAMIC_POLICY = Int8Policy(op_types=("MatMul", "Gemm"), calibrate_method="none (dynamic, per run)")


@dataclass
class CalibrationSet:
    """Task inputs for calibration: uint8 HxWx3 RGB images and texts, with where they came from."""

    images: list[np.ndarray]
    texts: list[str]
    source: dict = field(default_factory=dict)
    image_texts: list[list[str]] = field(default_factory=list)  # per image its own texts (ToyWorld), or []


def calibration_set(n: int = DEFAULT_CALIB_N, images: str | Path | None = None, texts: str | Path | None = None,
                    seed: int = 90_001, size: int = 96) -> CalibrationSet:
    """``n`` images and up to ``4 n`` texts: from a user's folder / text file (one prompt per line) when
    given, else ToyWorld ``train`` scenes at ``seed`` (kept apart from evaluation seeds) and their texts."""
    from edgeseg.runtime.images import load_image
    from edgeseg.train.data.toyworld import CLASSES, ToyWorld, ToyWorldConfig

    if n < 1:
        raise ValueError(f"calibration needs at least one sample; got n={n}")
    source: dict = {"n": n}
    world = ToyWorld("train", seed, ToyWorldConfig(size=size))
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration image folder {str(folder)!r} not found; pass a folder of "
                                    f"{'/'.join(IMAGE_SUFFIXES)} files")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
        if not files:
            raise ValueError(f"calibration image folder {str(folder)!r} has no {'/'.join(IMAGE_SUFFIXES)} files")
        imgs = [load_image(p) for p in files]
        source["images"] = {"folder": str(folder), "files": len(files)}
    else:
        imgs = [world[i].image for i in range(n)]
        source["images"] = {"toyworld": "train", "seed": seed, "size": size}
    if texts is not None:
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(f"calibration text file {str(path)!r} not found; pass a file with one "
                                    f"prompt per line")
        txt = [line.strip() for line in path.read_text().splitlines() if line.strip()][:4 * n]
        if not txt:
            raise ValueError(f"calibration text file {str(path)!r} has no non-empty lines")
        source["texts"] = {"file": str(path), "lines": len(txt)}
    else:
        txt = list(CLASSES)
        for i in range(n):
            scene = world[i]
            txt += [scene.caption] + [e.text for e in scene.expressions[:2]]
        txt = txt[:max(4 * n, len(CLASSES))]
        source["texts"] = {"toyworld": "train", "seed": seed, "kinds": "class names, captions, expressions"}
    pairs = [[e.text for e in world[i].expressions] for i in range(len(imgs))] if images is None else []
    return CalibrationSet(imgs, txt, source, pairs)


def is_default_calibration(source: dict | None) -> bool:
    """Whether a build's recorded calibration source is the default (ToyWorld, DEFAULT_CALIB_N samples)."""
    return bool(source) and source.get("n") == DEFAULT_CALIB_N and "toyworld" in source.get("images", {}) \
        and "toyworld" in source.get("texts", {})


def component_feeds(component: dict, manifest: dict, bundle_dir: str | Path,
                    calib: CalibrationSet) -> Iterator[dict[str, np.ndarray]]:
    """Calibration feeds (batch 1) for a component, chosen by its input names: ``image`` gets preprocessed
    images, ``input_ids`` tokenized texts (with the bundle's prompt template)."""
    from edgeseg.runtime.images import preprocess
    from edgeseg.runtime.tokenizer import ClipTokenizer

    names = [t["name"] for t in component["inputs"]]
    if names == ["image"]:
        for img in calib.images:
            yield {"image": preprocess(img, manifest["preprocessing"])}
    elif names == ["input_ids"]:
        tok = ClipTokenizer.from_manifest(manifest["tokenizer"], bundle_dir)
        template = manifest.get("method_config", {}).get("template", "{}")
        for text in calib.texts:
            yield {"input_ids": tok([template.format(text)])}
    else:
        raise ValueError(f"no calibration recipe for a component with inputs {names}; calibrated components "
                         f"take 'image' or 'input_ids'. Exclude it from INT8 (INT8_EXCLUDE = ['.*']) or add a "
                         f"recipe in export/quantize.py")


def quantizable_nodes(path: str | Path, policy: Int8Policy, exclude: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(names of nodes the policy quantizes, names it excludes: activation MatMuls and pattern matches)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    const = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                         for o in n.output}
    pats = [re.compile(p) for p in tuple(policy.exclude_patterns) + tuple(exclude)]
    quantize, excluded = [], []
    for n in model.graph.node:
        if n.op_type not in policy.op_types:
            continue
        activation_only = n.op_type == "MatMul" and not any(i in const for i in n.input)
        if (policy.weights_only and activation_only) or any(p.search(n.name) for p in pats):
            excluded.append(n.name)
        else:
            quantize.append(n.name)
    return quantize, excluded


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(src: str | Path, dst: str | Path, feeds: Iterator[dict[str, np.ndarray]],
                  policy: Int8Policy = INT8_POLICY, exclude: tuple[str, ...] = (), external: bool = False,
                  stride: int | None = None, ranges: str | Path | None = None) -> dict:
    """FP32 ONNX -> Q/DQ INT8 ONNX calibrated on ``feeds``. Returns what was done, for the manifest.
    ``external``: write the weights to ``<dst>.data`` (a source with external data). ``stride``: with a
    :class:`~.calib_pipeline.SpoolReader` as ``feeds``, collect that many samples at a time (bounded memory;
    also lets samples differ in their dynamic dims). ``ranges``: an onnxruntime calibration cache already
    collected from ``feeds`` (:class:`~.calib_chunked.ChunkedCalibrator`); onnxruntime then runs no calibration."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    quantize, excluded = quantizable_nodes(src, policy, exclude)
    if not quantize:
        copy_graph(src, dst)
        return {"quantized_nodes": 0, "excluded_nodes": excluded, "note": "no quantizable op: kept FP32"}

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it, self.count = iter(feeds), 0

        def get_next(self):
            item = next(self.it, None)
            self.count += item is not None
            return item

    reader = feeds if stride or ranges else _Reader()
    methods = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
               "Percentile": CalibrationMethod.Percentile}
    if policy.calibrate_method not in methods:
        raise ValueError(f"unknown calibrate_method {policy.calibrate_method!r}; choose one of {sorted(methods)}")
    hint = _DropPreprocessHint()  # ORT suggests quant_pre_process, which fails on our TorchScript exports
    logging.getLogger().addFilter(hint)
    quiet = contextlib.redirect_stdout(io.StringIO()) if stride or ranges else contextlib.nullcontext()
    try:
        with quiet:
            quantize_static(
                str(src), str(dst), None if ranges else reader, quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=policy.per_channel,
                reduce_range=policy.resolved_reduce_range(),
                op_types_to_quantize=list(policy.op_types), nodes_to_exclude=excluded,
                calibrate_method=methods[policy.calibrate_method], use_external_data_format=external,
                extra_options={"ActivationSymmetric": policy.symmetric, "WeightSymmetric": policy.symmetric,
                               "QuantizeBias": False,  # int32 bias Q/DQ: TensorRT dequantizes int8/fp8/int4 only
                               **({"CalibStridedMinMax": stride} if stride and not ranges else {})},
                **({"calibration_cache_path": str(ranges)} if ranges else {}))
    finally:
        logging.getLogger().removeFilter(hint)
    done = {"quantized_nodes": len(quantize), "excluded_nodes": excluded}
    if ranges:  # the caller collected them and knows its sample count
        return done
    if reader.count == 0:
        raise ValueError(f"calibration of {Path(src).name} saw no samples")
    return dict(done, calibration_samples=reader.count)


def quantize_int8_dynamic(src: str | Path, dst: str | Path, policy: Int8Policy = INT8_DYNAMIC_POLICY,
                          exclude: tuple[str, ...] = (), external: bool = False) -> dict:
    """FP32 ONNX -> dynamic INT8 ONNX for ONNX Runtime CPU (no calibration). Returns what was done.
    ``external``: write the weights to ``<dst>.data`` (a source with external data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize, excluded = quantizable_nodes(src, policy, exclude)
    if not quantize:
        copy_graph(src, dst)
        return {"quantized_nodes": 0, "excluded_nodes": excluded, "note": "no quantizable op: kept FP32"}
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=policy.per_channel,
                         reduce_range=policy.resolved_reduce_range(),
                         op_types_to_quantize=list(policy.op_types), nodes_to_exclude=excluded,
                         use_external_data_format=external,
                         extra_options={"WeightSymmetric": policy.symmetric, "MatMulConstBOnly": True})
    finally:
        logging.getLogger().removeFilter(hint)
    return {"quantized_nodes": len(quantize), "excluded_nodes": excluded}
