"""Predictors shared between threads: results identical to single-threaded ones.

Each thread segments its own image (of its own size, so a result computed from another thread's image shows),
through the convenience API (``set_image`` then ``predict``) or the explicit one (``state = encode(image)``;
``predict(..., state=state)``), interleaved as the scheduler likes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from edgeseg.runtime import LSegPredictor, RefDiffPredictor
from edgeseg.train.data.refer import ReferWorld
from edgeseg.train.data.toyworld import ToyWorld, ToyWorldConfig

LABELS = ["circle", "square", "triangle", "star", "grass", "sand", "water", "sky"]


def images(n: int) -> list[np.ndarray]:
    world = ToyWorld("all", 11)
    return [np.asarray(Image.fromarray(world[i].image).resize((80 + 8 * i, 72 + 4 * i))) for i in range(n)]


def same(a, b) -> bool:
    return (a.labels == b.labels and np.array_equal(a.label_map, b.label_map)
            and np.array_equal(a.probabilities, b.probabilities))


def test_one_lseg_predictor_serves_8_threads_x_200_calls(lseg_bundle, tmp_path):
    pred = LSegPredictor(lseg_bundle, cache_dir=tmp_path)
    imgs = images(8)
    want = [pred.segment(img, LABELS) for img in imgs]
    start = threading.Barrier(8)

    def worker(k: int) -> int:
        start.wait()
        bad = 0
        for i in range(200):
            if i % 2:
                pred.set_image(imgs[k])
                got = pred.predict(LABELS)
            else:
                got = pred.predict(LABELS, state=pred.encode(imgs[k]))
            bad += not same(got, want[k])
        return bad

    with ThreadPoolExecutor(8) as ex:
        wrong = list(ex.map(worker, range(8)))
    assert wrong == [0] * 8, f"wrong results per thread: {wrong} (of 200 each)"


def test_set_image_in_one_thread_does_not_change_another_threads_image(lseg_bundle, tmp_path):
    pred = LSegPredictor(lseg_bundle, cache_dir=tmp_path)
    a, b = images(2)
    want_a = pred.segment(a, LABELS)
    step = threading.Barrier(2)
    out = {}

    def first():
        pred.set_image(a)
        step.wait()  # the other thread sets its image now
        step.wait()
        out["a"] = pred.predict(LABELS)

    def second():
        step.wait()
        pred.set_image(b)
        step.wait()

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert same(out["a"], want_a)


def test_one_refdiff_predictor_serves_4_threads(refdiff_bundle, tmp_path):
    pred = RefDiffPredictor(refdiff_bundle, cache_dir=tmp_path, parser=None)
    world = ReferWorld(5, ToyWorldConfig(size=96))
    samples = [world[i] for i in range(4)]
    want = []
    for s in samples:
        pred.set_image(s.scene.image)
        want.append(pred.predict(s.expression.text))
    start = threading.Barrier(4)

    def worker(k: int) -> int:
        s, bad = samples[k], 0
        start.wait()
        for i in range(4):  # set_image racing the other threads' predicts
            if i % 2:
                pred.set_image(s.scene.image)
                got = pred.predict(s.expression.text)
            else:
                got = pred.predict(s.expression.text, state=pred.encode(s.scene.image))
            bad += not (got.best == want[k].best and np.array_equal(got.mask, want[k].mask)
                        and np.array_equal(got.scores["total"], want[k].scores["total"])
                        and np.array_equal(got.attention, want[k].attention))
        return bad

    with ThreadPoolExecutor(4) as ex:
        wrong = list(ex.map(worker, range(4)))
    assert wrong == [0] * 4, f"wrong results per thread: {wrong} (of 4 each)"
