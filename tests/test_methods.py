"""The one method registry (edgeseg.methods.METHODS) is what export, the runtime, eval, the CLI and the test
fixtures read: each entry's parts resolve, its bundle holds exactly the components it lists, and the CLI offers
exactly the registered methods."""

from __future__ import annotations

import pytest

from edgeseg.cli import build_parser
from edgeseg.export.bundle import COMPONENTS
from edgeseg.methods import METHODS, get_method, methods_of_kind
from edgeseg.runtime import Bundle, load_predictor
from edgeseg.runtime.predictor_base import TwoPhasePredictor


@pytest.mark.parametrize("name", list(METHODS))
def test_the_bundle_of_each_method_holds_the_components_it_lists(request, name):
    spec = METHODS[name]
    bundle = Bundle(request.getfixturevalue(f"{name}_bundle"))
    assert bundle.method == name
    assert sorted(bundle.components) == sorted(spec.components)
    assert set(spec.components) <= set(COMPONENTS)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_part_of_each_entry_resolves(name):
    spec = METHODS[name]
    assert callable(spec.assembler())
    for path, part in ((spec.loader_path, spec.loader), (spec.predictor_path, spec.predictor),
                       (spec.evaluate_path, spec.evaluate), (spec.torch_reference_path, spec.torch_reference)):
        if path is None:
            with pytest.raises(ValueError, match=f"method {name!r} has no "):
                part()
        else:
            assert callable(part())


@pytest.mark.parametrize("name", methods_of_kind("segmentation"))
def test_load_predictor_picks_the_registered_segmentation_predictor(request, name):
    pred = load_predictor(request.getfixturevalue(f"{name}_bundle"), cache_dir=None)
    assert type(pred) is METHODS[name].predictor() and isinstance(pred, TwoPhasePredictor)


def test_every_component_belongs_to_a_method():
    listed = {c for m in METHODS.values() for c in m.components}
    assert listed == set(COMPONENTS)


def test_the_cli_offers_exactly_the_registered_methods():
    parser = build_parser()
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["export"]._actions}
    assert list(actions["method"].choices) == list(METHODS)
    seg = {a.dest: a for a in parser._subparsers._group_actions[0].choices["segment"]._actions}
    assert seg["method"].choices == methods_of_kind("segmentation") == ["lseg", "tcl", "ifseg"]
    ev = {a.dest: a for a in parser._subparsers._group_actions[0].choices["eval"]._actions}
    assert ev["method"].choices == ["lseg", "tcl", "ifseg", "refdiff"]


def test_an_unknown_method_is_refused_with_the_registered_names():
    with pytest.raises(ValueError, match=r"unknown method 'segformer'; registered methods: \['clip', 'ifseg', "
                                         r"'lseg', 'refdiff', 'tcl'\]"):
        get_method("segformer")
