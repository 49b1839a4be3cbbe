"""The ToyWorld referring split: deterministic, every kind present, targets visible and unambiguous."""

from collections import Counter

import numpy as np

from edgeseg.train.data.refer import REFER_KINDS, ReferWorld


def test_refer_split_is_deterministic_and_balanced():
    a, b = ReferWorld(3), ReferWorld(3)
    for i in range(4):
        assert np.array_equal(a[i].scene.image, b[i].scene.image) and a[i].expression == b[i].expression
    assert Counter(a[i].kind for i in range(40)) == {k: 10 for k in REFER_KINDS}


def test_distractors_match_their_kind():
    world = ReferWorld(0)
    for i in range(60):
        s = world[i]
        objs, t = s.scene.objects, s.scene.objects[s.expression.target]
        assert s.target_mask.sum() == t.area > 50
        others = objs[1:]
        if s.kind == "colour":
            assert any(o.shape == t.shape and o.colour != t.colour for o in others)
            assert s.expression.text == f"the {t.colour} {t.shape}"
        elif s.kind == "shape":
            assert any(o.colour == t.colour and o.shape != t.shape for o in others)
        else:
            twin = objs[1]
            assert twin.shape == t.shape and abs(twin.centroid[0] - t.centroid[0]) > 8
            side = "left" if t.centroid[0] < twin.centroid[0] else "right"
            assert s.expression.text.endswith(f"on the {side}")
        # unambiguous: no other object has the named colour+shape (colour/shape kinds)
        if s.kind in ("colour", "shape", "twins_colour"):
            assert sum(o.name == t.name for o in objs) == 1
