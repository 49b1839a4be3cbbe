"""Registry of runtime predictors: one per method, all with the same two-phase API.

    from edgeseg.runtime.predictors import PREDICTORS, load_predictor
    pred = load_predictor("engines/lseg_toy")      # the method is read from the bundle's manifest
    pred.set_image(image); res = pred.predict(["circle", "grass"])

Every predictor takes ``(bundle, cache_dir=..., provider=..., postprocess=True)``; ``postprocess`` switches the
method's own refinement (TCL: PAMR, IFSeg: kNN) and is ignored by methods without one (LSeg). Results carry
``labels``, ``label_map`` (HxW int32), ``probabilities`` (CxHxW float32), ``timings_ms`` and ``provider``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle import Bundle
from .lseg import LSegPredictor
from .ifseg import IFSegPredictor
from .tcl import TCLPredictor

PREDICTORS: dict[str, type] = {  # manifest "method" -> predictor class
    "lseg": LSegPredictor,
    "ifseg": IFSegPredictor,
    "tcl": TCLPredictor,
}
# Referring segmentation: predict(expression) instead of predict(labels); class imported on demand.
REFERRING = {"refdiff": "edgeseg.runtime.refdiff.RefDiffPredictor"}


def list_methods() -> list[str]:
    """Methods the runtime can segment with."""
    return sorted(PREDICTORS)


def load_predictor(bundle: Bundle | str | Path, method: str | None = None, **kwargs: Any):
    """The predictor for ``bundle``'s method; ``method`` (optional) must match the manifest."""
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=kwargs.pop("provider", None))
    kwargs.pop("provider", None)
    if method is not None and method != b.method:
        raise ValueError(f"bundle {b.path} holds method {b.method!r}, not {method!r}; export one with "
                         f"edgeseg export {method} ..., or drop --method")
    if b.method in REFERRING:
        raise ValueError(f"bundle {b.path} holds the referring method {b.method!r}, which takes an expression, not "
                         f"labels: use {REFERRING[b.method]} (or edgeseg refer IMAGE \"the red circle\" --bundle ...)")
    if b.method not in PREDICTORS:
        raise ValueError(f"bundle {b.path} holds method {b.method!r}, which has no segmentation predictor; "
                         f"segmentable methods: {list_methods()}")
    return PREDICTORS[b.method](b, **kwargs)
