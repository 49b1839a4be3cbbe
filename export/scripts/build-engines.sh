#!/usr/bin/env bash
# Build TensorRT engines for an edgeseg bundle ON THE DEVICE THAT WILL RUN THEM: an engine is tied to the GPU
# architecture (compute capability) and the TensorRT version; the runtime refuses any other pairing.
#
#   export/scripts/build-engines.sh BUNDLE TARGET [PRECISION ...]
#     BUNDLE     an FP32 bundle from `edgeseg export` (copy the folder to the device)
#     TARGET     jetson  JetPack 6.x on Orin: TensorRT 10.3 (python3-libnvinfer), cuda-python 12.x
#                server  x86_64 GPU server: TensorRT 11.x (pip install tensorrt cuda-python); 10.3+ also works
#     PRECISION  fp16 (default) and/or int8; fp32 also accepted
#   env: OPT_LEVEL (builder optimization level, default 3), CALIB_IMAGES (int8: folder of your images),
#        EDGESEG_CACHE (engine + timing cache root, default ~/.cache/edgeseg)
#
# Needs on the device: edgeseg with the `export` extra (the FP16/INT8 conversion and calibration use torch-free
# onnx/onnxruntime code, but the ToyWorld calibration data lives in edgeseg.train), TensorRT, cuda-python.
# For each precision: convert (FP16 graph / Q/DQ INT8) -> lint for the device's TensorRT -> build engines
# (strongly typed, profile from the manifest, engine + timing cache) -> smoke-run each engine against
# ONNX Runtime CPU on the same graph.
set -euo pipefail
usage() { sed -n 2,17p "$0"; exit 2; }
[ $# -ge 2 ] || usage
bundle=$1; target=$2; shift 2
precisions=${*:-fp16}
opt_level=${OPT_LEVEL:-3}
[ -f "$bundle/manifest.json" ] || { echo "error: $bundle has no manifest.json (export it first: edgeseg export ...)"; exit 2; }

trt_version=$(python3 -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null) || {
  echo "error: the tensorrt Python package is not importable."
  echo "  jetson: sudo apt install python3-libnvinfer (JetPack 6 ships TensorRT 10.3)"
  echo "  server: pip install tensorrt cuda-python"
  exit 2; }
python3 -c "import cuda" 2>/dev/null || { echo "error: cuda-python missing: pip install cuda-python"; exit 2; }
case "$target" in
  jetson) lint_target=trt10.3
          [[ "$trt_version" == 10.3.* ]] || echo "warning: JetPack 6 ships TensorRT 10.3; this device has $trt_version" ;;
  server) lint_target=trt11
          [[ "$trt_version" == 1[01].* ]] || { echo "error: TensorRT $trt_version: edgeseg needs 10.3+ or 11.x"; exit 2; } ;;
  *) usage ;;
esac
echo "TensorRT $trt_version on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "$target")"
[ "$target" = jetson ] && command -v nvpmodel >/dev/null && echo "power mode: $(nvpmodel -q 2>/dev/null | head -1)"

for p in $precisions; do
  out="${bundle%/}_${p}_trt"
  calib=()
  [ "$p" = int8 ] && [ -n "${CALIB_IMAGES:-}" ] && calib=(--calib-images "$CALIB_IMAGES")
  echo "== $p -> $out"
  edgeseg build "$bundle" --precision "$p" --backend trt --out "$out" --opt-level "$opt_level" "${calib[@]}"
  edgeseg lint "$out" --target "$lint_target"
  python3 - "$out" <<'PY'
import sys, time
import numpy as np
from edgeseg.runtime import Bundle
from edgeseg.runtime.trt_backend import profile_from_spec
folder = sys.argv[1]
trt, ort = Bundle(folder, provider="trt"), Bundle(folder, provider="ort-cpu")
for name, comp in trt.components.items():
    rng = np.random.default_rng(0)
    feeds = {p["name"]: (rng.integers(1, 1000, p["opt"]) if t["dtype"] == "int64" else
                         rng.standard_normal(p["opt"])).astype(t["dtype"])
             for p, t in zip(profile_from_spec(comp), comp["inputs"])}
    a, b = ort.run(name, feeds), trt.run(name, feeds)
    t0 = time.perf_counter(); [trt.run(name, feeds) for _ in range(20)]; ms = (time.perf_counter() - t0) / 20 * 1e3
    for k in a:
        x, y = a[k].astype(np.float64).ravel(), b[k].astype(np.float64).ravel()
        cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)
        print(f"  {name:<14} {k:<14} cosine vs ORT {cos:.5f}  max-abs {np.abs(x - y).max():.2e}  {ms:.2f} ms/call")
PY
done
