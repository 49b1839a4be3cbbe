"""Output axes derived from input axes (``height/8``, ``height/4*width/4``) are accepted; anything else is refused."""

import pytest

from edgeseg.runtime.manifest import ComponentSpec, ManifestError, derived_axis

AXES = {"batch", "height", "width"}


@pytest.mark.parametrize("name", ["height", "height/8", "height/4*width/4", "batch*2", "width/16"])
def test_derived_axes_follow_the_inputs(name):
    assert derived_axis(name, AXES)


@pytest.mark.parametrize("name", ["abc", "height/0", "4", "height/x", "height//4", "height/-4", "rows/8", ""])
def test_other_names_are_not_axes(name):
    assert not derived_axis(name, AXES)


def _component(out_axis: str) -> dict:
    return {"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, "height", "width"],
                        "min": [1, 3, 16, 16], "opt": [1, 3, 96, 96], "max": [1, 3, 96, 96]}],
            "outputs": [{"name": "latent", "dtype": "float32", "shape": [1, 4, out_axis, "width/8"]}]}


def test_manifest_accepts_a_derived_output_axis():
    spec = ComponentSpec.from_dict("vae_encoder", _component("height/8"))
    assert spec.output("latent").shape == (1, 4, "height/8", "width/8")


def test_manifest_refuses_an_unknown_output_axis_in_one_line():
    with pytest.raises(ManifestError) as e:
        ComponentSpec.from_dict("vae_encoder", _component("rows/8"))
    assert str(e.value) == ("components.vae_encoder.outputs[0].shape[2] = 'rows/8': not a dynamic axis of the inputs "
                            "['height', 'width']; a fixed dim must be a positive integer")
