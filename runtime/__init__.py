"""edgeseg slim runtime: numpy + onnxruntime + tokenizers + pillow. Never imports torch, train or export.

    from edgeseg.runtime import Bundle, LSegPredictor
    pred = LSegPredictor(Bundle("engines/lseg_toy"))
    res = pred.segment("scene.png", ["circle", "star", "grass"])
"""

from .bundle import Bundle, BundleError
from .cache import TextEmbeddingCache
from .lseg import LSegPredictor, LSegResult

__all__ = ["Bundle", "BundleError", "LSegPredictor", "LSegResult", "TextEmbeddingCache"]
