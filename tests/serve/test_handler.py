"""The serving model's work without a server: request decoding, the batched encoder (``encode_many``), one
request's failure kept to itself, one-line messages vs internal errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from serve_support import LABELS

from edgeseg.serve.handler import SegmentationHandler, error_message
from edgeseg.serve.protocol import Request, RequestError, decode


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg"])
def test_encode_many_equals_encode_and_runs_the_encoder_in_batches(method, predictors, images, monkeypatch):
    pred = predictors[method]
    some = images[:5] + images[14:16]  # 96, 64 and 128 px: one preprocessed shape
    calls = []
    run = pred.bundle.run

    def counting(name, feeds):
        if name == pred.ENCODER:
            calls.append(feeds["image"].shape[0])
        return run(name, feeds)

    monkeypatch.setattr(pred.bundle, "run", counting)
    states = pred.encode_many(some)
    assert calls == [4, 3]  # the toy encoders take at most 4 images per run (manifest max)
    for image, st in zip(some, states):
        one = pred.encode(image)
        assert st.size == one.size and np.array_equal(st.input, one.input)
        for k in one.encoded:
            assert np.array_equal(st.encoded[k], one.encoded[k]) and not st.encoded[k].flags.writeable
        a = pred.predict(LABELS, state=st)
        b = pred.predict(LABELS, state=one)
        assert np.array_equal(a.label_map, b.label_map)


def test_a_failing_request_does_not_fail_its_batch(predictors, images):
    pred = predictors["lseg"]
    handler = SegmentationHandler(pred, log=lambda msg: None)
    reqs = [decode("segmentation", {"image": images[i][None], "labels": np.array([[x.encode() for x in labels]],
                                                                                     dtype=object)})
            for i, labels in ((0, LABELS), (1, ["circle", ""]), (2, LABELS))]
    out = handler.run(reqs)
    assert handler.batches == [3]
    assert isinstance(out[1], ValueError) and error_message(out[1]) == ("label 1 is ''; every label must be a "
                                                                        "non-empty string", True)
    for i in (0, 2):
        want = pred.predict(LABELS, state=pred.encode(images[i]))
        assert np.array_equal(out[i]["label_map"][0], want.label_map) and "probabilities" not in out[i]


def test_decoding_refuses_malformed_requests_in_one_line(images):
    img = images[0][None]
    labels = np.array([[b"circle"]], dtype=object)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(images[0]).save(png, format="PNG")
    ok = decode("segmentation", {"image_bytes": np.array([[png.getvalue()]], dtype=object), "labels": labels},
                {"probabilities": True})
    assert np.array_equal(ok.items[0].image, images[0]) and ok.probabilities and ok.items[0].texts == ["circle"]
    bad = [({"image": img, "image_bytes": np.array([[b"x"]], dtype=object), "labels": labels}, {}, "exactly one"),
           ({"labels": labels}, {}, "exactly one"),
           ({"image": img}, {}, "'labels' is missing"),
           ({"image": img, "labels": np.array([[b"a"], [b"b"]], dtype=object)}, {}, "one row per image"),
           ({"image": img, "labels": np.array([[b"\xff\xfe"]], dtype=object)}, {}, "not valid UTF-8"),
           ({"image": img, "labels": labels}, {"probabilities": "yes"}, "give true or false"),
           ({"image_bytes": np.array([[b""]], dtype=object), "labels": labels}, {}, "image_bytes[0] is empty")]
    for inputs, params, text in bad:
        with pytest.raises(RequestError) as e:
            decode("segmentation", inputs, params)
        assert text in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RequestError, match="3 expressions in one request; this server takes at most 2"):
        decode("referring", {"image": img, "expressions": np.array([[b"a", b"b", b"c"]], dtype=object)},
               max_expressions=2)


def test_bugs_are_internal_errors_not_the_clients_fault():
    try:
        {}["missing"]
    except KeyError as e:
        msg, users = error_message(e)
    assert not users and msg.startswith("internal error (KeyError") and "server log" in msg
    assert error_message(RequestError("give exactly one\nsecond line")) == ("give exactly one", True)
    assert Request([]).items == []
