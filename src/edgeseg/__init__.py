"""edgeseg: language-driven segmentation from PyTorch to edge engines.

The package root holds only the version and the CLI entry point; the work lives in
``edgeseg.train`` (torch), ``edgeseg.export`` (torch -> ONNX) and ``edgeseg.runtime`` (numpy + onnxruntime).
"""

__version__ = "0.1.0"
