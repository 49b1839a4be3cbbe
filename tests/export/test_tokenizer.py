"""Parity of the torch-free runtime CLIP tokenizer with open_clip's SimpleTokenizer."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("tokenizers")

from edgeseg.export.tokenizer import CLIP_PATTERN as EXPORT_PATTERN  # noqa: E402
from edgeseg.export.tokenizer import build_clip_tokenizer_json, load_clip_vocab  # noqa: E402
from edgeseg.runtime.tokenizer import CLIP_PATTERN as RUNTIME_PATTERN  # noqa: E402
from edgeseg.runtime.tokenizer import ClipTokenizer, clean_text  # noqa: E402

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "gray"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart", "pentagon", "diamond", "cross", "ring"]
GROUNDS = ["sand", "grass", "water", "snow", "wood", "stone"]
SUPERLATIVES = ["largest", "smallest", "leftmost", "rightmost", "topmost", "bottom-most"]
RELATIONS = ["left of", "right of", "above", "below", "next to", "inside"]

LONG_TEXT = "a red circle and a blue star on sand, " * 12  # > 77 tokens

HANDWRITTEN = [
    "a red circle and a blue star on sand", "the largest hexagon", "heart", "", " ", "\t\n",
    "A RED Circle", "The   largest\t\thexagon\n", "  leading and trailing  ", "HEART!!!",
    "a photo of a heart.", "red, green; blue: yellow?", "it's the star's ring", "they're here, we've won",
    "I'm sure you'll see it'd fit", "don't can't won't", "''s ' s '", "3 stars and 12 circles",
    "0.5 of a hexagon, 100% red", "#1 circle @ (x=3, y=4)", "circle_1 circle-2 circle/3", "a+b=c*d^2 ~ 5$",
    "\"quoted\" 'single'", "ellipsis... and --- dashes", "<html> tags </html>", "&amp; &lt;b&gt; &quot;hi&quot;",
    "&amp;amp;amp; nested", "<b>&amp;amp;</b> html kept", "&EACUTE;t&eacute; &#39;s &#x2019;", "&notanentity; & alone",
    "tab\tseparated\tvalues", "line1\r\nline2\rline3", "e-mail: shape@toy.world", "http://example.com/a?b=c",
    "CamelCaseWord snake_case_word", "x" * 40, "ab" * 30, "1234567890", "v2.0.1-beta", "emoji-free :) ;-)",
    "<start_of_text>", "<END_OF_TEXT> star", "x!<end_of_text> y", "a<start_of_text>b", "!!<start_of_text>",
    LONG_TEXT, "word " * 80, "supercalifragilisticexpialidocious hexagons",
    "café naïve façade résumé", "Straße Österreich", "日本語のテキスト", "赤い円と青い星", "빨간 원", "красный круг",
    "Ελληνικά ΟΔΟΣ οδός", "İstanbul ıi", "emoji 😀🔴⭐ star", "👍🏽 family 👨‍👩‍👧", "ﬁne ﬂuffy ligatures",
    "ＬＯＵＤ　ＮＯＩＳＥＳ", "“curly” ‘quotes’ ʼ", "non\u00a0breaking\u202fspace", "zero\u200bwidth\u200djoiner",
    "e\u0301 combining vs é", "Ω ohm \u2126 and K kelvin \u212a", "line\u2028sep\u2029para\u0085nel",
    "\x1b[31mred\x1b[0m terminal", "null\x00byte\x07bell\x7fdel", "bom\ufeffhere", "arabic: دائرة حمراء",
    "hebrew: עיגול", "hindi: लाल वृत्त", "thai: วงกลมสีแดง", "mixed 12٣४ digits ²³ ½", "math ∑∫√ ≤≥ ∞",
    "currency €£¥₹ $", "\u3000ideographic space", "tabs\x0bvertical\x0cform", "\x1cfile\x1dgroup\x1erec\x1funit",
    "ǅungla Ĳssel", "ſ long s 'ſ", "x\u0345x 1\u03451 !\u0345!", "full width ＡＢＣ１２３！", "halfwidth ｶﾀｶﾅ",
    "\u2066isolate\u2069 \u200frtl", "a &lt; b", "<b>\n&amp;amp;amp;amp; next line", "&amp&lt no semicolons",
    "&#0; &#128; &#x110000; &#9999999999; &#x0d;", "&amp;#39;s &amp;lt;",
]

# Mojibake is repaired by ftfy exactly as open_clip does (ftfy is a runtime dependency): in exact parity.
MOJIBAKE = ["cafÃ©", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;", "voilÃ le travail", "caf&Atilde;&copy;"]

# The one residual difference, stated (see edgeseg.runtime.tokenizer's docstring): code points unassigned in
# Python 3.11's Unicode 14 but assigned later (U+0558, U+A7CE) are classified differently by open_clip's `regex`
# module and by Oniguruma in `tokenizers`.
KNOWN_DIVERGENT = ["x\u0558x", "x\ua7cex"]


def _toyworld_prompts() -> list[str]:
    out = []
    for i, (c, s) in enumerate(itertools.product(COLORS, SHAPES)):
        g = GROUNDS[i % len(GROUNDS)]
        out.append([f"a {c} {s}", f"the {c} {s} on {g}", f"a {c} {s} and a {COLORS[(i + 3) % 10]} "
                    f"{SHAPES[(i + 7) % 10]} on {g}"][i % 3])
    out += [f"the {sup} {s}" for sup, s in zip(SUPERLATIVES * 2, SHAPES)]
    out += [f"The {COLORS[i % 10]} {SHAPES[i % 10]} {RELATIONS[i % 6]} the {COLORS[(i + 5) % 10]} "
            f"{SHAPES[(i + 3) % 10]}." for i in range(30)]
    return out


TEXTS = HANDWRITTEN + MOJIBAKE + _toyworld_prompts()


@pytest.fixture(scope="module", params=[32, 77], ids=lambda n: f"L{n}")
def pair(request, tmp_path_factory):
    """(runtime ClipTokenizer, open_clip tokenizer, manifest facts) for one context length."""
    length = request.param
    out = tmp_path_factory.mktemp(f"tok{length}") / "tokenizer.json"
    facts = build_clip_tokenizer_json(out, length)
    ours = ClipTokenizer.from_manifest(facts, out.parent)
    ref = open_clip.get_tokenizer("ViT-B-16", context_length=length)
    return ours, ref, facts


def test_corpus_size():
    assert len(TEXTS) >= 200


def test_vocab_matches_simple_tokenizer():
    encoder, merges = load_clip_vocab()
    ref = open_clip.tokenizer.SimpleTokenizer()
    assert encoder == ref.encoder
    assert {m: i for i, m in enumerate(merges)} == ref.bpe_ranks
    assert EXPORT_PATTERN == RUNTIME_PATTERN


def test_cleaning_matches_open_clip():
    from open_clip.tokenizer import _clean_lower

    bad = [t for t in TEXTS if clean_text(t) != _clean_lower(t)]
    assert bad == []


def test_cleaning_repairs_mojibake_as_open_clip_through_ftfy():
    from open_clip.tokenizer import _clean_lower

    texts = ["cafÃ©", "the naÃ¯ve guy", "Ã  gauche", "donâ€™t", "the â€œredâ€\x9d cup", "ï»¿BOM here",
             "&amp;lt;b&amp;gt;", "ﬁsh ﬂag", "ＦＵＬＬ width", "“curly” ‘quotes’"]
    assert [clean_text(t) for t in texts] == [_clean_lower(t) for t in texts]


def test_parity_exact(pair):
    ours, ref, facts = pair
    got = ours(TEXTS)
    want = ref(TEXTS).numpy()
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), facts["context_length"])
    mismatched = [TEXTS[i] for i in np.flatnonzero((got != want).any(axis=1))]
    assert mismatched == []


def test_known_divergent_inputs_still_tokenize(pair):
    ours, ref, facts = pair
    ids = ours(KNOWN_DIVERGENT)
    assert ids.shape == (len(KNOWN_DIVERGENT), facts["context_length"])
    assert (ids[:, 0] == facts["sot_id"]).all()
    # still divergent (if a regex or tokenizers upgrade aligns them, move them into TEXTS)
    assert (ids != ref(KNOWN_DIVERGENT).numpy()).any(axis=1).all()


def test_plain_tokenizers_file_matches_for_clean_text(pair):
    """The json alone (its normalizer, template, truncation, padding) serves non-Python consumers."""
    from tokenizers import Tokenizer

    ours, ref, facts = pair
    raw = Tokenizer.from_file(ours.source)
    texts = _toyworld_prompts() + ["A RED Circle", "The   largest\t hexagon ", LONG_TEXT, ""]
    got = np.array([e.ids for e in raw.encode_batch(texts)])
    assert (got == ref(texts).numpy()).all()


def test_truncation_reporting(pair):
    ours, ref, facts = pair
    length = facts["context_length"]
    fits = " ".join(["a"] * (length - 2))  # sot + L-2 tokens + eot == L: not cut
    over = " ".join(["a"] * (length - 1))
    texts = [fits, over, LONG_TEXT, "heart", ""]
    assert ours.truncated(texts) == [False, True, True, False, False]
    ids, cut = ours.encode(texts)
    assert cut == [False, True, True, False, False]
    assert (ids == ref(texts).numpy()).all()
    assert ids[1, -1] == facts["eot_id"] and ids[2, -1] == facts["eot_id"]
    assert ours([]).shape == (0, length)


def test_manifest_facts_and_atomic_write(tmp_path):
    path = tmp_path / "bundle" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text("stale")
    facts = build_clip_tokenizer_json(path, 32)
    assert facts == {"file": "tokenizer.json", "type": "clip-bpe", "context_length": 32, "sot_id": 49406,
                     "eot_id": 49407, "pad_id": 0, "vocab_size": 49408, "lowercase": True}
    assert path.read_text().startswith("{")
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]


def test_missing_file_error(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="re-export the bundle") as info:
        ClipTokenizer.from_file(missing, 77)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("bad, named", [("a red circle", "single str"), (None, "NoneType"),
                                        ({"a": 1}, "dict"), (["ok", 3], "texts\\[1\\] is int")])
def test_type_errors(pair, bad, named):
    ours, _, _ = pair
    with pytest.raises(TypeError, match=named):
        ours(bad)
    with pytest.raises(TypeError, match=named):
        ours.truncated(bad)


def test_wrong_special_ids_rejected(pair):
    ours, _, facts = pair
    with pytest.raises(ValueError, match="re-export"):
        ClipTokenizer.from_file(ours.source, facts["context_length"], sot_id=1)


def test_runtime_module_never_imports_torch(tmp_path):
    code = ("import sys, edgeseg.runtime.tokenizer as t; "
            "bad = [m for m in ('torch', 'open_clip', 'edgeseg.export', 'edgeseg.train') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=120)
