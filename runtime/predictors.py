"""Runtime predictors by method, read from the one method registry (:data:`edgeseg.methods.METHODS`).

    from edgeseg.runtime.predictors import PREDICTORS, load_predictor
    pred = load_predictor("engines/lseg_toy")      # the method is read from the bundle's manifest
    pred.set_image(image); res = pred.predict(["circle", "grass"])

Every segmentation predictor takes ``(bundle, cache_dir=..., provider=..., postprocess=True)``; ``postprocess``
switches the method's own refinement (TCL: PAMR, IFSeg: kNN) and is ignored by methods without one (LSeg).
Results carry ``labels``, ``label_map`` (HxW int32), ``probabilities`` (CxHxW float32), ``timings_ms`` and
``provider``. Referring methods (Ref-Diff) take an expression instead: their predictor is the registry's
``predictor()`` (``edgeseg.runtime.RefDiffPredictor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.methods import METHODS, methods_of_kind

from .bundle import Bundle

# manifest "method" -> predictor class, for the segmentation methods of the registry
PREDICTORS: dict[str, type] = {name: METHODS[name].predictor() for name in methods_of_kind("segmentation")}


def list_methods() -> list[str]:
    """Methods the runtime can segment with (labels -> label map)."""
    return sorted(PREDICTORS)


def load_predictor(bundle: Bundle | str | Path, method: str | None = None, **kwargs: Any):
    """The predictor for ``bundle``'s method; ``method`` (optional) must match the manifest."""
    b = bundle if isinstance(bundle, Bundle) else Bundle(bundle, provider=kwargs.pop("provider", None))
    kwargs.pop("provider", None)
    if method is not None and method != b.method:
        raise ValueError(f"bundle {b.path} holds method {b.method!r}, not {method!r}; export one with "
                         f"edgeseg export {method} ..., or drop --method")
    spec = METHODS.get(b.method)
    if spec is not None and spec.kind == "referring":
        raise ValueError(f"bundle {b.path} holds the referring method {b.method!r}, which takes an expression, not "
                         f"labels: use {spec.predictor_path.replace(':', '.')} (or edgeseg refer IMAGE "
                         f"\"the red circle\" --bundle ...)")
    if b.method not in PREDICTORS:
        raise ValueError(f"bundle {b.path} holds method {b.method!r}, which has no segmentation predictor; "
                         f"segmentable methods: {list_methods()}")
    return PREDICTORS[b.method](b, **kwargs)
