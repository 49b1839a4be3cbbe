#!/usr/bin/env bash
# GPU benchmarks (edgeseg bench on a CUDA machine): PyTorch eager FP32/FP16, ONNX Runtime CUDA FP32/FP16/INT8,
# TensorRT FP16/INT8 where installed. Needs: pip install -c constraints.txt -e '.[dev]' onnxruntime-gpu
# (and tensorrt + cuda-python for the trt-* rows). Backends that cannot run are rows with the reason.
# Usage: benchmarks/gpu/run.sh [OUT_DIR]   (default benchmarks/results/gpu-<gpu name>)
set -euo pipefail
cd "$(dirname "$0")/../.."
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
OUT=${1:-benchmarks/results/gpu-$GPU}
mkdir -p "$OUT"
BACKENDS="torch-cuda-fp32 torch-cuda-fp16 torch-cuda-compile-fp16 ort-cuda-fp32 ort-cuda-fp16 ort-cuda-int8 ort-trt-fp16 trt-fp16 trt-int8"
edgeseg export lseg lseg_toy --out engines/lseg_toy
edgeseg bench components clip_image/ViT-B-16 clip_text/ViT-B-16 --batch 1 8 32 --backends $BACKENDS --out "$OUT/vitb16-gpu.json"
edgeseg bench components lseg_encoder/toy-tiny --batch 1 8 --backends $BACKENDS --out "$OUT/components-tiny-gpu.json"
edgeseg bench pipeline engines/lseg_toy --backends torch-cuda-fp32 torch-cuda-fp16 ort-cuda-fp32 ort-cuda-fp16 trt-fp16 --out "$OUT/lseg-pipeline-gpu.json"
echo "results under $OUT"
