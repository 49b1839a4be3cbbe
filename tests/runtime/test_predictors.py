"""The predictor registry: the manifest picks the predictor; a wrong method or a non-segmentation bundle is refused."""

import pytest

from edgeseg.cli import main
from edgeseg.runtime import PREDICTORS, list_methods, load_predictor


@pytest.mark.parametrize("method", ["lseg", "tcl", "ifseg"])
def test_manifest_picks_the_predictor_and_it_segments(request, method, text_cache):
    from edgeseg.train.data.toyworld import ToyWorld

    pred = load_predictor(request.getfixturevalue(f"{method}_bundle"), cache_dir=text_cache, postprocess=False)
    assert type(pred) is PREDICTORS[method] and list_methods() == ["ifseg", "lseg", "tcl"]
    res = pred.segment(ToyWorld("all", 3)[0].image, "circle,grass,sky", full_probabilities=True)
    assert res.label_map.shape == (96, 96) and res.probabilities.shape == (3, 96, 96)
    assert {"preprocess", "encoder", "text", "head", "postprocess"} <= set(res.timings_ms)


def test_wrong_method_and_non_segmentation_bundles_are_refused(tcl_bundle, clip_bundle, text_cache, tmp_path):
    with pytest.raises(ValueError, match="holds method 'tcl', not 'ifseg'; export one with edgeseg export ifseg"):
        load_predictor(tcl_bundle, "ifseg", cache_dir=text_cache)
    with pytest.raises(ValueError, match="holds method 'clip', which has no segmentation predictor"):
        load_predictor(clip_bundle, cache_dir=text_cache)
    with pytest.raises(SystemExit, match="not 'lseg'"):
        main(["segment", "x.png", "--labels", "a,b", "--bundle", str(tcl_bundle), "--method", "lseg",
              "--cache-dir", str(text_cache), "--out", str(tmp_path / "o.png")])
