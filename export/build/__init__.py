"""The torch-free half of export: FP32 bundle -> FP16 / INT8 bundle (and TensorRT engines).

Runs on the target device (a Jetson with JetPack, a GPU server) with the ``build`` extra only: numpy, onnx,
onnxruntime; never torch (``tests/test_layers.py`` checks the whole import graph).

- :mod:`.builder`: ``build_bundle`` (``edgeseg build``), staged and renamed into place.
- :mod:`.precision`: the FP16 keep-FP32 policy and conversion.
- :mod:`.quantize`: INT8 Q/DQ calibration and ONNX Runtime dynamic INT8.
- :mod:`.lint`: TensorRT 10.3 / 11 compatibility lint.
- :mod:`.external`: ONNX external data, one ``<component>.onnx.data`` per graph that needs it.
- :mod:`.trt_engines`: TensorRT engine builds (polygraphy / TensorRT Python API).
"""

from edgeseg.export.build.builder import build_bundle, default_out, precision_recipe

__all__ = ["build_bundle", "default_out", "precision_recipe"]
