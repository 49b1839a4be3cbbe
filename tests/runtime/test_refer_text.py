"""Referring-expression parsing (spaCy and fallback), target token index vs open_clip, position bias."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime import refer_text as rt
from edgeseg.runtime.refer_text import (DIRECTIONS, FALLBACK_RULE, ParsedExpression, parse_expression,
                                        position_bias, target_token_index)

spacy = pytest.importorskip("spacy")

# expression -> (target word, target phrase, directions)
CASES = {
    "the red circle": ("circle", "red circle", []),
    "the circle on the left": ("circle", "circle", ["left"]),
    "the leftmost object": ("object", "leftmost object", ["left"]),
    "the square left of the red star": ("square", "square", []),  # "left of": relational
    "the largest object": ("object", "largest object", []),
    "the object in the middle": ("object", "object", ["middle"]),
    "a man riding a horse": ("man", "man", []),
    "the blue ring above the star": ("ring", "blue ring", []),
    "the green hexagon at the top": ("hexagon", "green hexagon", ["top"]),
    "the rightmost object": ("object", "rightmost object", ["right"]),
    "the star at the bottom": ("star", "star", ["bottom"]),
    "man in red shirt who is standing": ("man", "man", []),
    "two dogs playing": ("dogs", "two dogs", []),
    "hexagonal tile": ("tile", "hexagonal tile", []),
    "the one on the right": ("one", "one", ["right"]),
    "the star on top of the box": ("star", "star", []),
}
# the fallback rule on the same expressions: target word (phrases checked on a few)
FALLBACK = {"the red circle": "circle", "the circle on the left": "circle", "the leftmost object": "object",
            "the square left of the red star": "square", "the largest object": "object",
            "the object in the middle": "object", "a man riding a horse": "man", "the blue ring above the star": "ring",
            "the green hexagon at the top": "hexagon", "man in red shirt who is standing": "man",
            "two dogs playing": "dogs", "the one on the right": "one", "the star on top of the box": "star"}


@pytest.fixture(scope="module")
def nlp_name():
    try:
        spacy.load(rt.DEFAULT_PIPELINE)
    except OSError:
        pytest.skip(f"spaCy pipeline {rt.DEFAULT_PIPELINE} not installed")
    return rt.DEFAULT_PIPELINE


@pytest.mark.parametrize("text", sorted(CASES))
def test_spacy_targets(nlp_name, text):
    p = parse_expression(text, nlp_name)
    word, phrase, dirs = CASES[text]
    assert (p.target_word, p.target_phrase, p.directions) == (word, phrase, dirs)
    assert p.text[slice(*p.target_char_span)] == word
    assert p.parser == f"spacy:{nlp_name}" and p.has_noun and p.message == ""


@pytest.mark.parametrize("text", sorted(FALLBACK))
def test_fallback_targets(text):
    p = parse_expression(text, None)
    assert p.target_word == FALLBACK[text]
    assert p.text[slice(*p.target_char_span)] == p.target_word
    assert p.parser == f"fallback: {FALLBACK_RULE}" and p.has_noun
    assert p.directions == CASES[text][2]


def test_fallback_phrases():
    assert parse_expression("the red circle", None).target_phrase == "red circle"
    assert parse_expression("a big blue square on the left", None).target_phrase == "big blue square"
    assert parse_expression("the 2 red squares", None).target_word == "squares"


def test_no_noun(nlp_name):
    for pipeline in (nlp_name, None):
        p = parse_expression("red", pipeline)
        assert not p.has_noun and p.target_word == "red" and "no noun found" in p.message
    p = parse_expression("left", None)
    assert not p.has_noun and p.directions == ["left"]


def test_whitespace_and_case(nlp_name):
    p = parse_expression("  The  Green   STAR at the top ", nlp_name)
    assert p.text == "The Green STAR at the top" and p.target_word == "STAR" and p.directions == ["top"]


def test_empty_expression():
    for bad in ("", "   ", "!!", "\n"):
        with pytest.raises(ValueError, match="expression is empty"):
            parse_expression(bad, None)
    with pytest.raises(ValueError, match="must be a str"):
        parse_expression(None)  # type: ignore[arg-type]


def test_missing_pipeline_falls_back():
    with pytest.warns(UserWarning, match="fallback rule"):
        p = parse_expression("the red circle", "xx_no_such_pipeline_sm")
    assert p.parser.startswith("fallback:") and p.target_word == "circle" and "not installed" in p.message
    p2 = parse_expression("red", "xx_no_such_pipeline_sm")  # cached failure: no second load attempt
    assert not p2.has_noun and "not installed" in p2.message


def test_given_nlp_object(nlp_name):
    nlp = spacy.load(nlp_name)
    p = parse_expression("a man riding a horse", nlp=nlp)
    assert p.target_word == "man" and p.parser.startswith("spacy:")
    assert isinstance(p, ParsedExpression)


# ---- target token index ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from edgeseg.export.tokenizer import build_clip_tokenizer_json
    from edgeseg.runtime.tokenizer import ClipTokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_clip_tokenizer_json(path, 77)
    return {"clip": ClipTokenizer.from_file(path, 77), "sd": ClipTokenizer.from_file(path, 77, pad_id=49407),
            "short": ClipTokenizer.from_file(path, 8)}


@pytest.mark.parametrize("text,word", [
    ("the hexagonal tile on the left", "hexagonal"),
    ("the leftmost object", "leftmost"),
    ("a skateboarder jumping over a rhombus", "rhombus"),
    ("a skateboarder jumping over a rhombus", "skateboarder"),
    ("the red circle", "circle"),
    ("The  RED,  circle!", "circle"),
    ("the man's hat", "man"),
])
def test_token_index_matches_open_clip(tokenizers, text, word):
    import open_clip

    start = text.index(word) if word in text else text.lower().index(word)
    span = (start, start + len(word))
    simple = open_clip.tokenizer.SimpleTokenizer()
    row = open_clip.tokenize([text])[0].numpy()
    pieces = simple.encode(word)
    for tok in (tokenizers["clip"], tokenizers["sd"]):
        idx = target_token_index(tok, text, span)
        assert row[idx] == pieces[-1]
        assert row[idx - len(pieces) + 1: idx + 1].tolist() == pieces  # all sub-tokens end at idx
        assert simple.decoder[int(row[idx])].endswith("</w>")


def test_token_index_truncation(tokenizers):
    short = tokenizers["short"]  # 8 ids: sot + 6 tokens + eot
    text = "a b c d e f g circle"
    assert target_token_index(short, text, (0, 1)) == 1
    assert target_token_index(short, text, (10, 11)) == 6  # "f": the last position before eot
    assert target_token_index(short, text, (12, 13)) is None  # "g" would be replaced by eot
    assert target_token_index(short, text, (14, 20)) is None
    long = " ".join(["big"] * 80) + " circle"
    assert target_token_index(tokenizers["sd"], long, (len(long) - 6, len(long))) is None
    with pytest.raises(ValueError, match="span"):
        target_token_index(short, text, (5, 5))
    with pytest.raises(ValueError, match="span"):
        target_token_index(short, text, (0, 99))


# ---- position bias -----------------------------------------------------------------------------------

def test_position_bias_shapes_and_ramps():
    h, w = 30, 48
    none = position_bias([], h, w)
    assert none.shape == (h, w) and none.dtype == np.float32 and (none == 1).all()
    left = position_bias(["left"], h, w)
    assert left.shape == (h, w) and left.dtype == np.float32
    row = left[0]
    assert row[0] == 1.0 and (np.diff(row) <= 0).all() and (row[32:] == 0).all() and row[31] == 0.0 and row[30] > 0
    assert (left == left[:1]).all()  # constant along y
    np.testing.assert_allclose(position_bias(["right"], h, w), left[:, ::-1])
    top = position_bias(["top"], h, w)
    col = top[:, 0]
    assert col[0] == 1.0 and (np.diff(col) <= 0).all() and (col[20:] == 0).all()
    np.testing.assert_allclose(position_bias(["bottom"], h, w), top[::-1])
    mid = position_bias(["middle"], h, 49)[0]
    assert mid[24] == 1.0 and mid[0] == 0.0 and mid[-1] == 0.0
    assert (np.diff(mid[:25]) > 0).all() and (np.diff(mid[24:]) < 0).all()
    np.testing.assert_allclose(mid, mid[::-1], atol=1e-6)


def test_position_bias_combines_and_validates():
    h, w = 20, 30
    both = position_bias(["left", "top"], h, w)
    np.testing.assert_allclose(both, position_bias(["left"], h, w) * position_bias(["top"], h, w))
    assert both.min() >= 0 and both.max() <= 1
    np.testing.assert_array_equal(position_bias(["leftmost"], h, w), position_bias(["left"], h, w))
    np.testing.assert_array_equal(position_bias("left", h, w), position_bias(["left"], h, w))
    assert position_bias(["left"], 1, 1).shape == (1, 1)
    with pytest.raises(ValueError, match="unknown direction 'north'"):
        position_bias(["north"], h, w)
    with pytest.raises(ValueError, match="positive ints"):
        position_bias([], 0, 5)
    assert set(DIRECTIONS.values()) == set(rt.CANONICAL_DIRECTIONS)


def test_no_heavy_imports():
    import subprocess
    import sys

    code = ("import sys; import edgeseg.runtime.refer_text as r, edgeseg.runtime.ddim as d; "
            "r.parse_expression('the red circle', None); r.position_bias(['left'], 4, 4); "
            "print(sorted(m for m in ('torch', 'spacy', 'open_clip', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
