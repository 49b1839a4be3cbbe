"""``edgeseg serve`` on the four toy bundles (one Triton server for the module, loopback, free ports): readiness,
results equal to the in-process runtime for every method over HTTP and gRPC, 16 concurrent clients batched by
Triton, bad requests answered with the runtime's one-line errors while the server stays ready."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from serve_support import EXPRESSIONS, LABELS, needs_triton

pytestmark = needs_triton


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def expect_same(out: dict, ref, labels: list[str]) -> None:
    assert out["label_map"].dtype == np.int32 and np.array_equal(out["label_map"], ref.label_map)
    share = np.bincount(ref.label_map.ravel(), minlength=len(labels)) / ref.label_map.size
    np.testing.assert_allclose(out["scores"], share, rtol=0, atol=1e-7)


def test_server_and_every_model_ready(server, http, grpc):
    assert server.ready() and server.live()
    assert http.is_server_ready() and grpc.is_server_ready()
    for model in ("lseg", "tcl", "ifseg", "refdiff"):
        assert http.is_model_ready(model) and grpc.is_model_ready(model)
    meta = http.get_model_metadata("lseg")
    assert [i["name"] for i in meta["inputs"]] == ["image", "image_bytes", "labels"]
    assert [o["name"] for o in meta["outputs"]] == ["label_map", "scores", "probabilities"]
    assert [o["datatype"] for o in http.get_model_metadata("refdiff")["outputs"]] == ["BOOL", "FP32", "BYTES"]


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg"])
def test_segmentation_equals_the_runtime(method, http, grpc, predictors, images):
    from edgeseg.serve.client import segment

    pred = predictors[method]
    for k, image in enumerate([images[0], images[14], images[15]]):  # 96, 64 and 128 px
        ref = pred.predict(LABELS, state=pred.encode(image))
        out = segment(http, method, image, LABELS, probabilities=True)
        expect_same(out, ref, LABELS)
        assert out["probabilities"].shape == ref.probabilities.shape
        np.testing.assert_array_equal(out["probabilities"], ref.probabilities)
        by_grpc = segment(grpc, method, png(image), LABELS, probabilities=k == 0)  # an encoded file over gRPC
        expect_same(by_grpc, ref, LABELS)
        if k == 0:
            np.testing.assert_array_equal(by_grpc["probabilities"], ref.probabilities)
        else:
            assert "probabilities" not in by_grpc


def test_refdiff_equals_the_runtime(http, grpc, predictors, images):
    from edgeseg.serve.client import refer

    pred = predictors["refdiff"]
    ref = pred.predict_many(EXPRESSIONS, state=pred.encode(images[1]))
    for client, image in ((http, images[1]), (grpc, png(images[1]))):
        out = refer(client, "refdiff", image, EXPRESSIONS)
        assert out["masks"].dtype == bool and out["masks"].shape == (2, 96, 96)
        for k, r in enumerate(ref):
            assert np.array_equal(out["masks"][k], r.mask)
            assert out["target_words"][k] == r.target_word
            assert out["scores"][k] == pytest.approx(float(r.scores["total"][r.best]), abs=1e-6)


def test_sixteen_concurrent_clients_are_batched_and_all_correct(server, predictors, images):
    """16 threads x 4 requests (each its own client and images); Triton's batcher merges them (fewer model
    executions than requests) and every answer equals the runtime's."""
    import urllib.request

    import tritonclient.http as httpclient

    from edgeseg.serve.client import metric, segment

    pred = predictors["lseg"]
    want = {i: pred.predict(LABELS, state=pred.encode(images[i])).label_map for i in range(14)}
    before = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    wrong, errors = [], []

    def client(c: int) -> None:
        conn = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            for r in range(4):
                i = (c + 3 * r) % 14
                try:
                    out = segment(conn, "lseg", images[i], LABELS)
                    if not np.array_equal(out["label_map"], want[i]):
                        wrong.append((c, r))
                except Exception as e:  # noqa: BLE001 - counted, reported below
                    errors.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not wrong
    deadline = time.monotonic() + 10  # Triton publishes its counters periodically: wait for the last requests
    while True:
        after = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        requests = (metric(after, "nv_inference_request_success", "lseg")
                    - metric(before, "nv_inference_request_success", "lseg"))
        if requests >= 64 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    executions = metric(after, "nv_inference_exec_count", "lseg") - metric(before, "nv_inference_exec_count", "lseg")
    assert requests == 64
    assert executions < requests, f"no batching: {executions} executions for {requests} requests"


def _runtime_error(fn) -> str:
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    return str(e.value).splitlines()[0]


BAD = {
    "no labels": ("labels", None),
    "empty labels": ("labels", []),
    "empty label": ("labels", ["circle", ""]),
    "65 labels": ("labels", [f"thing {i}" for i in range(65)]),
    "1x1 image": ("image", np.zeros((1, 1, 3), np.uint8)),
    "corrupt image bytes": ("image", b"\x89PNG\r\n\x1a\n this is no image"),
    "wrong dtype": ("image", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_segmentation_requests_get_one_line_errors(case, server, http, grpc, predictors, images):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from edgeseg.serve.client import image_input, texts_input

    what, value = BAD[case]
    image, labels = images[2], LABELS
    if what == "image" and value is not None:
        image = value
    if what == "labels":
        labels = value
    inputs = [image_input(httpclient, image)]
    if case == "wrong dtype":
        inputs = [image_input(httpclient, images[2].astype(np.float32))]
    if labels is not None:
        inputs.append(texts_input(httpclient, "labels", labels))
    with pytest.raises(InferenceServerException) as e:
        http.infer("lseg", inputs)
    assert e.value.status() == "400"
    msg = e.value.message()
    assert "\n" not in msg and "Traceback" not in msg
    pred = predictors["lseg"]
    if case in ("empty labels", "empty label", "65 labels"):
        assert msg == _runtime_error(lambda: pred.predict(labels, state=pred.encode(images[2])))
    elif case == "1x1 image":
        assert msg == _runtime_error(lambda: pred.encode(image))
    elif case == "corrupt image bytes":
        assert msg.startswith("image_bytes[0] is not a readable image file")
    elif case == "no labels":
        assert "labels" in msg and "missing" in msg
    elif case == "wrong dtype":
        assert "FP32" in msg and "UINT8" in msg
    # the server and the model stay up, and the next good request is answered (here over gRPC)
    assert server.ready() and http.is_model_ready("lseg")
    from edgeseg.serve.client import segment

    assert segment(grpc, "lseg", images[2], LABELS)["label_map"].shape == (96, 96)


def test_bad_refdiff_requests(server, http, grpc, images):
    from tritonclient.utils import InferenceServerException

    from edgeseg.serve.client import refer

    image = images[1]
    cases = ((http, [f"the red circle number {i}" for i in range(17)], "400", "17 expressions in one request"),
             (grpc, ["   "], "StatusCode.INVALID_ARGUMENT", "expression is empty"),
             (http, [], "400", "expressions must be a non-empty list"))
    for client, exprs, status, start in cases:
        with pytest.raises(InferenceServerException) as e:
            refer(client, "refdiff", image, exprs)
        assert str(e.value.status()) == status and e.value.message().startswith(start), e.value.message()
        assert "\n" not in e.value.message()
    assert server.ready()


def test_a_bad_request_does_not_fail_the_others_in_its_batch(server, predictors, images):
    """Good and bad requests sent together (batched by Triton): each bad one gets its error, each good one its
    correct answer."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from edgeseg.serve.client import segment

    pred = predictors["lseg"]
    want = pred.predict(LABELS, state=pred.encode(images[3])).label_map
    results: dict[int, object] = {}

    def send(i: int) -> None:
        conn = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            results[i] = segment(conn, "lseg", images[3], [""] if i % 3 == 0 else LABELS)["label_map"]
        except InferenceServerException as e:
            results[i] = e
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, r in results.items():
        if i % 3 == 0:
            assert isinstance(r, InferenceServerException) and r.status() == "400"
        else:
            assert isinstance(r, np.ndarray) and np.array_equal(r, want), (i, r)
    assert len(results) == 24
