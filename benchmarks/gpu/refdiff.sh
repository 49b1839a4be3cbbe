#!/usr/bin/env bash
# Full-size Ref-Diff on a CUDA machine (issue 15, section 5), under ~8 minutes: per stage, ONNX Runtime CUDA FP16
# (the runtime predictor, K = 1 4 16 expressions per image, at 512 and 1024 px input images), and per component
# PyTorch eager FP16 and torch.compile FP16 (the export wrappers at the bundle's shapes). Writes JSON under OUT.
# NOT RUN in the session that wrote it (no GPU there). Needs: pip install -c constraints.txt -e '.[dev]' and
# onnxruntime-gpu (staged as ../shared/gpu/stage-wheels.sh describes: join the parts, pip install the wheel).
# Weights are random (full-vit-b architectures): latency only, no accuracy. Usage: benchmarks/gpu/refdiff.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/results/gpu-refdiff}
WORK=${WORK:-/tmp/edgeseg-gpu-refdiff}
mkdir -p "$OUT" "$WORK"
python -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 'onnxruntime-gpu missing')"
[ -f "$WORK/refdiff_full/manifest.json" ] || timeout 240 edgeseg export refdiff full-vit-b --out "$WORK/refdiff_full"
for SIZE in 512 1024; do
  timeout 150 edgeseg bench pipeline "$WORK/refdiff_full" --backends ort-cuda-fp16 --k 1 4 16 --iters 3 --warmup 1 \
    --size "$SIZE" --workdir "$WORK" --out "$OUT/refdiff-ort-cuda-fp16-$SIZE.json" || echo "bench at $SIZE failed"
done
timeout 180 python - "$OUT/refdiff-torch-components.json" <<'PY' || echo "torch component timing failed"
import json, sys, time
import torch
from edgeseg.export.bundle import example_inputs
from edgeseg.export.refdiff_bundle import refdiff_components

comps, _ = refdiff_components("full-vit-b")
rows = []
for name, (wrapper, spec) in comps.items():
    model = wrapper.eval().cuda().half()
    inputs = [x.cuda().half() if x.is_floating_point() else x.cuda() for x in example_inputs(name, spec, "opt", batch=1)]
    for mode in ("eager", "compile"):
        fn = torch.compile(model) if mode == "compile" else model
        with torch.no_grad():
            for _ in range(3):
                fn(*inputs)
            torch.cuda.synchronize()
            ts = []
            for _ in range(10):
                t = time.perf_counter(); fn(*inputs); torch.cuda.synchronize(); ts.append((time.perf_counter() - t) * 1e3)
        rows.append({"component": name, "backend": f"torch-cuda-{mode}-fp16", "p50_ms": sorted(ts)[len(ts) // 2]})
        print(rows[-1], flush=True)
    model.cpu(); torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}, open(sys.argv[1], "w"), indent=2)
PY
echo "results under $OUT"
