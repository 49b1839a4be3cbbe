import numpy as np
import pytest

from edgeseg.train.data.toyworld import (CLASSES, SEEN_SHAPES, SHAPES, STUFF, UNSEEN_COMBOS, UNSEEN_SHAPES,
                                         ToyWorld, ToyWorldConfig)


def test_deterministic_from_seed():
    a, b = ToyWorld("all", 7)[3], ToyWorld("all", 7)[3]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
    assert a.caption == b.caption and [e.text for e in a.expressions] == [e.text for e in b.expressions]
    c = ToyWorld("all", 8)[3]
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(ToyWorld("all", 7)[4].image, a.image)


def test_splits_hold_out_unseen_shapes_and_combos():
    train = ToyWorld("train", 0)
    for i in range(150):
        for o in train[i].objects:
            assert o.shape in SEEN_SHAPES and (o.colour, o.shape) not in UNSEEN_COMBOS
        assert not np.isin(train[i].semantic, [CLASSES.index(s) for s in UNSEEN_SHAPES]).any()
    unseen = ToyWorld("unseen", 0)
    shapes = {o.shape for i in range(60) for o in unseen[i].objects}
    assert shapes == set(UNSEEN_SHAPES)
    assert ToyWorld("seen", 0).labels() == list(SEEN_SHAPES) + list(STUFF)


def test_masks_objects_and_language_agree():
    world = ToyWorld("all", 3, ToyWorldConfig(size=128))
    for i in range(40):
        s = world[i]
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert 1 <= len(s.objects) <= 5 or len(s.objects) == 0
        assert (s.semantic < len(CLASSES)).all()
        for k, o in enumerate(s.objects):
            m = s.instance_mask(k)
            assert m.sum() == o.area >= 12
            assert (s.semantic[m] == CLASSES.index(o.shape)).all()
            assert o.name in s.caption
        assert s.caption.endswith(f"on {s.stuff}")
        assert (s.semantic[s.instances == 0] != 255).all()
        for e in s.expressions:
            t = s.objects[e.target]
            if e.kind == "colour_shape":
                assert e.text == f"the {t.colour} {t.shape}"
            if e.text == "the leftmost object":
                assert t.centroid[0] == min(o.centroid[0] for o in s.objects)
            if e.text == "the largest object":
                assert t.area == max(o.area for o in s.objects)


def test_expressions_cover_every_kind():
    world = ToyWorld("all", 0)
    kinds = {e.kind for i in range(100) for e in world[i].expressions}
    assert kinds == {"colour_shape", "position", "size", "relation"}


def test_object_sizes_follow_config():
    world = ToyWorld("all", 1, ToyWorldConfig(size=100, min_scale=0.2, max_scale=0.3))
    sizes = [o.size for i in range(30) for o in world[i].objects]
    assert min(sizes) >= 20 and max(sizes) <= 30


def test_bad_split_and_size():
    with pytest.raises(ValueError, match="unknown ToyWorld split 'nope'"):
        ToyWorld("nope")
    with pytest.raises(ValueError, match="too small"):
        ToyWorld("all", 0, ToyWorldConfig(size=8))


def test_toyworld_cli_writes_files(tmp_path):
    import json

    from edgeseg.cli import main

    main(["toyworld", "--seed", "7", "--out", str(tmp_path), "--n", "2"])
    meta = json.loads((tmp_path / "scene_000.json").read_text())
    assert meta["caption"] == ToyWorld("all", 7)[0].caption
    for f in ("scene_000.png", "scene_000_semantic.png", "scene_000_instances.png", "scene_001.json"):
        assert (tmp_path / f).is_file()
    assert set(SHAPES) <= set(meta["classes"])
