"""Both runtime tokenizers against their references on a real-world corpus (tests/data/refer_texts.txt: referring
expressions and captions with accents, CJK, emoji, HTML entities, curly quotes, ligatures, full-width forms, a
BOM, mojibake, invisible and odd whitespace characters, literal special tokens and > 77-token texts), plus the
control-character texts of test_tokenizer.py (which a one-per-line file cannot hold):

- the SD tokenizer (``cleaning="transformers"``, Ref-Diff's ``sd_tokenizer``) equals transformers'
  ``CLIPTokenizer`` loaded from an SD 1.5 pipeline's ``tokenizer/`` folder, called as SD pipelines call it
  (``padding="max_length", max_length=77, truncation=True``): ids, padding and truncation;
- the CLIP tokenizer (``cleaning="open_clip"``) equals ``open_clip.get_tokenizer("ViT-B-16")``.

No residual difference on these texts. The one known class of difference (the CLIP tokenizer only) is code points
unassigned in Python's Unicode version: see test_tokenizer.KNOWN_DIVERGENT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from test_tokenizer import HANDWRITTEN  # noqa: E402

from edgeseg.export.tokenizer import (SD_TOKENIZER_FACTS, build_clip_tokenizer_json, load_clip_vocab,  # noqa: E402
                                      write_sd_tokenizer_folder)
from edgeseg.runtime.tokenizer import ClipTokenizer  # noqa: E402

CORPUS_FILE = Path(__file__).resolve().parents[1] / "data" / "refer_texts.txt"


def read_corpus() -> list[str]:
    """One text per line, split on "\\n" only (str.splitlines would also split on \\x1c, \\x85, U+2028...)."""
    raw = CORPUS_FILE.read_text(encoding="utf-8")
    assert raw.endswith("\n"), f"{CORPUS_FILE} must end with a newline"
    return raw[:-1].split("\n")


CORPUS = read_corpus()
TEXTS = CORPUS + [t for t in HANDWRITTEN if t not in CORPUS]


@pytest.fixture(scope="module")
def bundle_tokenizer(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return out.parent, build_clip_tokenizer_json(out, 77)


@pytest.fixture(scope="module")
def sd_pair(bundle_tokenizer, tmp_path_factory):
    """(runtime SD tokenizer as a refdiff manifest configures it, transformers' CLIPTokenizer of the folder)."""
    folder, facts = bundle_tokenizer
    ours = ClipTokenizer.from_manifest(dict(facts, **SD_TOKENIZER_FACTS), folder)
    ref_dir = write_sd_tokenizer_folder(tmp_path_factory.mktemp("sd15") / "tokenizer")
    ref = transformers.CLIPTokenizer.from_pretrained(ref_dir, local_files_only=True)
    return ours, ref


def sd_reference(ref, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
    ids = ref(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    full = ref(texts)["input_ids"]
    return np.array(ids, dtype=np.int64), [len(f) > 77 for f in full]


def test_the_corpus_is_varied_and_large():
    assert len(CORPUS) >= 300 and len(set(CORPUS)) == len(CORPUS)
    kinds = {"accents": "é", "CJK": "猫", "emoji": "😀", "entity": "&amp;", "curly": "’", "ligature": "ﬁ",
             "full-width": "ｔ", "BOM": "\ufeff", "mojibake": "Ã©", "nbsp": "\u00a0"}
    assert [k for k, c in kinds.items() if not any(c in t for t in CORPUS)] == []


def test_sd_tokenizer_equals_transformers_clip_tokenizer(sd_pair):
    ours, ref = sd_pair
    want, want_cut = sd_reference(ref, TEXTS)
    got, cut = ours.encode(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 77)
    assert [TEXTS[i] for i in np.flatnonzero((got != want).any(axis=1))] == []
    assert cut == want_cut and sum(cut) >= 10
    assert (got[np.array(cut), -1] == 49407).all() and ours.pad_id == ref.pad_token_id == 49407


def test_the_reference_is_the_tokenizers_backed_clip_tokenizer(sd_pair):
    """transformers 5's CLIPTokenizer (what diffusers loads for an SD 1.5 pipeline's tokenizer/) runs the
    tokenizers pipeline: no ftfy and no HTML unescaping, so SD and CLIP tokenizers differ on such texts."""
    ours, ref = sd_pair
    assert hasattr(ref, "backend_tokenizer") and type(ref).__name__ == "CLIPTokenizer"
    encoder, _ = load_clip_vocab()
    named = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert ref.get_vocab() == {named.get(k, k): v for k, v in encoder.items()}
    texts = ["tom &amp; jerry", "the man’s hat", "ﬁsh", "ｔｈｅ ｃａｒ", "\ufeffman", "cafÃ©", "<|endoftext|> x"]
    want, _ = sd_reference(ref, texts)
    assert (ours(texts) == want).all()


def test_the_two_cleanings_differ_where_ftfy_and_unescaping_act(bundle_tokenizer, sd_pair):
    folder, facts = bundle_tokenizer
    sd, _ = sd_pair
    clip = ClipTokenizer.from_manifest(dict(facts, pad_id=49407), folder)  # open_clip's cleaning, SD padding
    texts = ["tom &amp; jerry", "the man’s hat", "ﬁsh", "ｔｈｅ ｃａｒ", "\ufeffman", "cafÃ©", "ΟΔΟΣ",
             "<|endoftext|> x", "a plain red car"]
    differs = (sd(texts) != clip(texts)).any(axis=1).tolist()
    assert differs == [True] * 8 + [False]


@pytest.mark.parametrize("length", [77, 32])
def test_clip_tokenizer_equals_open_clip_on_the_corpus(tmp_path, length):
    facts = build_clip_tokenizer_json(tmp_path / "tokenizer.json", length)
    ours = ClipTokenizer.from_manifest(facts, tmp_path)
    want = open_clip.get_tokenizer("ViT-B-16", context_length=length)(TEXTS).numpy()
    got = ours(TEXTS)
    assert [TEXTS[i] for i in np.flatnonzero((got != want).any(axis=1))] == []


def test_cleaning_is_checked(bundle_tokenizer):
    folder, facts = bundle_tokenizer
    with pytest.raises(ValueError, match=r"unknown tokenizer cleaning 'ftfy'; use one of \['open_clip', "
                                         r"'transformers'\] \(or re-export the bundle\)"):
        ClipTokenizer.from_manifest(dict(facts, cleaning="ftfy"), folder)
    assert ClipTokenizer.from_manifest(facts, folder).cleaning == "open_clip"
