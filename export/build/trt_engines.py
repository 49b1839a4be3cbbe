"""TensorRT engine builder (Python API), for TensorRT 10.3 (JetPack 6) and 11.x, with an engine cache.

- Strongly typed networks on both versions (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: required
  for our FP16 / Q/DQ INT8 graphs on 10.3, accepted and ignored by 11.x where strong typing is always on).
  No FP16/INT8 builder flags, no calibrator: the precision is in the ONNX graph.
- One optimization profile from the component's manifest I/O spec (min/opt/max per dynamic input).
- ``builder_optimization_level`` (0-5, default 3) and a persistent timing cache per GPU / TensorRT version.
- Engine cache: ``$EDGESEG_CACHE/engines/<key>.plan`` with ``key = engine_key(ONNX sha256, precision recipe,
  profile, compute capability, TensorRT version, optimization level)``; the key and its facts go into the
  manifest, and the runtime refuses an engine whose TensorRT version or GPU differ from the machine's.

Not executed in this repository's CI (TensorRT cannot be installed there). ``require_tensorrt`` fails early
with an install hint; ``export/scripts/build-engines.sh`` runs the build on the target device.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from edgeseg.runtime.fileio import atomic_write_bytes, cache_root, sha256_file
from edgeseg.runtime.trt_backend import engine_key, environment, import_tensorrt, profile_from_spec


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or an ImportError naming what to install (checked before any build work)."""
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise ImportError(f"TensorRT {trt.__version__} is too old: edgeseg builds with TensorRT 10.3+ or 11.x "
                          f"(strongly typed networks, name-based I/O)")
    return trt


def engine_cache_dir() -> Path:
    return cache_root() / "engines"


def build_engine(onnx_path: str | Path, component: dict, out_dir: str | Path, opt_level: int = 3,
                 workspace_mib: int | None = None, cache_dir: str | Path | None = None) -> dict:
    """Build (or take from the engine cache) the engine of one component; copy it next to its ONNX file as
    ``<name>.plan`` and return the manifest's ``engine`` entry."""
    trt = require_tensorrt()
    env = environment()
    onnx_path = Path(onnx_path)
    profile = profile_from_spec(component)
    key = engine_key(component["sha256"], component["recipe_hash"], profile, env["compute_capability"],
                     env["tensorrt"], opt_level)
    cache = Path(cache_dir) if cache_dir else engine_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / f"{key}.plan"
    seconds, hit = 0.0, cached.is_file()
    if not hit:
        t0 = time.perf_counter()
        plan = _build(trt, onnx_path, profile, opt_level, workspace_mib,
                      cache / f"timing-sm{env['compute_capability']}-trt{env['tensorrt']}.cache")
        atomic_write_bytes(cached, plan)
        seconds = time.perf_counter() - t0
    dst = Path(out_dir) / f"{onnx_path.stem}.plan"
    shutil.copyfile(cached, dst)
    return {"file": dst.name, "sha256": sha256_file(dst), "key": key, "cache_hit": hit,
            "build_seconds": round(seconds, 1), "strongly_typed": True, "builder_optimization_level": opt_level,
            "profile": profile, **env,
            "command": f"edgeseg build <fp32 bundle> --precision {component.get('precision', 'fp32')} "
                       f"--backend trt  (on the target GPU)"}


def _build(trt: Any, onnx_path: Path, profile: list[dict], opt_level: int, workspace_mib: int | None,
           timing_cache: Path) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT's ONNX parser rejects {onnx_path.name}: {errors} (run: edgeseg lint {onnx_path})")
    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    opt = builder.create_optimization_profile()
    for p in profile:
        opt.set_shape(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
    config.add_optimization_profile(opt)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name} (see the TensorRT log above)")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
