"""One model instance's work: a batch of decoded requests -> per request its output tensors or its error.

    handler = make_handler(predictor, "segmentation")
    outcomes = handler.run([request_a, request_b])   # [dict of output arrays | Exception, ...], in order

Segmentation: the images of every request in the batch go through the encoder together
(``TwoPhasePredictor.encode_many``: one N x 3 x H' x W' run per chunk of the encoder's max batch), then each
request's labels through the head (text embeddings through the predictor's cache, shared by all requests).
Referring (Ref-Diff): each request in turn, its K expressions batched through the UNet (``predict_many``); its
per-image stages (VAE, SAM proposals) have no batched form in the runtime.

A request that fails gets its own exception; the others in the batch are answered.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

from edgeseg.errors import user_message

from .protocol import Request, RequestError, referring_outputs, segmentation_outputs

LOG = logging.getLogger("edgeseg.serve")


def error_message(e: BaseException) -> tuple[str, bool]:
    """(one line for the client, whether it is the client's mistake). A user's mistake keeps the runtime's own
    one-line message (as the CLI prints it); anything else is an internal error whose traceback is logged."""
    if isinstance(e, RequestError):
        return str(e).strip().splitlines()[0], True
    msg = user_message(e)
    if msg is not None:
        return msg, True
    return f"internal error ({type(e).__name__}: {str(e)[:200]}); see the server log", False


def _guard(fn: Callable[[], Any], log: Callable[[str], None]) -> Any:
    """fn() or its exception (a bug's traceback logged)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - every request gets an answer
        if not error_message(e)[1]:
            log(traceback.format_exc())
        return e


class SegmentationHandler:
    """LSeg / TCL / IFSeg: batched encoder, per-request head."""

    kind = "segmentation"

    def __init__(self, predictor: Any, log: Callable[[str], None] | None = None):
        self.predictor = predictor
        self.log = log or LOG.error
        self.batches: list[int] = []  # images per encoder batch run by this handler (for tests and stats)

    def run(self, requests: list[Request]) -> list[Any]:
        images = [it.image for r in requests for it in r.items]
        states = _guard(lambda: self.predictor.encode_many(images), self.log) if images else []
        if isinstance(states, Exception):  # isolate the failing request: encode each on its own
            out = []
            for r in requests:
                out.append(_guard(lambda r=r: self._answer(r, self.predictor.encode_many([i.image for i in r.items])),
                                  self.log))
            return out
        self.batches.append(len(images))
        out, k = [], 0
        for r in requests:
            mine = states[k:k + len(r.items)]
            k += len(r.items)
            out.append(_guard(lambda r=r, mine=mine: self._answer(r, mine), self.log))
        return out

    def _answer(self, request: Request, states: list[Any]) -> dict[str, Any]:
        results = [self.predictor.predict(it.texts, state=s) for it, s in zip(request.items, states)]
        return segmentation_outputs(results, request.probabilities)


class ReferringHandler:
    """Ref-Diff: per request, per image ``encode`` then ``predict_many`` over its expressions."""

    kind = "referring"

    def __init__(self, predictor: Any, log: Callable[[str], None] | None = None):
        self.predictor = predictor
        self.log = log or LOG.error
        self.batches: list[int] = []

    def run(self, requests: list[Request]) -> list[Any]:
        self.batches.append(sum(len(r.items) for r in requests))
        return [_guard(lambda r=r: self._answer(r), self.log) for r in requests]

    def _answer(self, request: Request) -> dict[str, Any]:
        p = self.predictor
        return referring_outputs([p.predict_many(it.texts, state=p.encode(it.image)) for it in request.items])


def make_handler(predictor: Any, kind: str, log: Callable[[str], None] | None = None):
    """The handler of a serving kind (``segmentation`` or ``referring``)."""
    return (SegmentationHandler if kind == "segmentation" else ReferringHandler)(predictor, log)
