"""edgeseg slim runtime: numpy + onnxruntime + tokenizers + pillow. Never imports torch, train or export.

    from edgeseg.runtime import Bundle, LSegPredictor
    pred = LSegPredictor(Bundle("engines/lseg_toy"))
    res = pred.segment("scene.png", ["circle", "star", "grass"])
"""

from .bundle import Bundle, BundleError
from .cache import TextEmbeddingCache
from .ifseg import IFSegPredictor, IFSegResult
from .lseg import LSegPredictor, LSegResult
from .predictors import PREDICTORS, list_methods, load_predictor
from .refdiff import RefDiffPredictor, RefDiffResult
from .refdiff_localize import AttentionLocalizer
from .refdiff_proposals import ProposalGenerator
from .refdiff_scorer import ProposalScorer
from .tcl import TCLPredictor, TCLResult

__all__ = ["Bundle", "BundleError", "LSegPredictor", "LSegResult", "PREDICTORS", "TextEmbeddingCache", "list_methods",
           "load_predictor", "IFSegPredictor", "IFSegResult", "TCLPredictor", "TCLResult", "RefDiffPredictor",
           "RefDiffResult", "AttentionLocalizer", "ProposalGenerator", "ProposalScorer"]
