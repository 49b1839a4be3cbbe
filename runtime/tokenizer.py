"""CLIP text tokenizer for the slim runtime (numpy + HF ``tokenizers``; no torch/open_clip).

Produces exactly what ``open_clip.get_tokenizer('ViT-B-16')(texts)`` produces
(``SimpleTokenizer``): ``[sot, tokens..., eot]`` padded with 0 to
``context_length``; a text that is too long keeps ``context_length - 1`` ids and
its last id is replaced by eot. The BPE itself runs from the ``tokenizer.json``
written by ``edgeseg.export.tokenizer.build_clip_tokenizer_json``.

Text cleaning follows open_clip's order: ``ftfy.fix_text`` (ftfy is a runtime
dependency, so mojibake repair such as ``"cafÃ©"`` -> ``"café"`` is exact) ->
``html.unescape`` twice -> strip -> collapse whitespace (``str.split``) ->
``str.lower``. :func:`fix_text_lite`, a standard-library re-implementation of
every ftfy step but mojibake repair, serves only where ftfy is not installed.
The json's own (approximate) normalizer is switched off so nothing is
normalized twice.

Known, documented differences from open_clip (all outside ToyWorld / plain text):

* Literal ``<start_of_text>``/``<end_of_text>`` in a prompt are tokenized exactly
  like open_clip (special id, unless glued to a preceding symbol run).
* Letter/number classes come from the Oniguruma regex engine inside
  ``tokenizers`` instead of the ``regex`` module. Checked over U+0080..U+2FFFF
  (Python 3.11, regex 2026.11, tokenizers 0.23): they agree everywhere except
  ~1500 code points that are unassigned in Python 3.11's Unicode 14 (assigned
  in later Unicode versions, which the two engines know to different extents),
  e.g. U+0558, U+088F, U+A7CE. U+0345 is handled specially (see ``_token_ids``).
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .integrity import inside

INSTALL_HINT = "pip install 'edgeseg[runtime]'"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
#: open_clip's pre-tokenization regex (kept identical to ``edgeseg.export.tokenizer``).
CLIP_PATTERN = (
    r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"edgeseg.runtime needs the 'tokenizers' package to tokenize text prompts; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return tokenizers


# --- ftfy.fix_text without fix_encoding (tables built as in ftfy 6.x chardata) ---------------

def _build_html_entities() -> dict[str, str]:
    entities = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():
                upper = "&" + name.upper()
                if html.unescape(upper) == upper:
                    entities[upper] = char.upper()
    return entities


_HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_HTML_ENTITIES = _build_html_entities()
_ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_C1_CONTROL_RE = re.compile(r"[\x80-\x9f]")
_SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_CONTROL_CHARS: dict[int, None] = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
     *range(0xFFF9, 0xFFFD)]
)
_LIGATURES = {ord(k): v for k, v in {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž",
    "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff",
    "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
}.items()}
_WIDTH_MAP = {0x3000: " "} | {
    i: unicodedata.normalize("NFKC", chr(i))
    for i in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(i)) != chr(i)
}
_MAX_SEGMENT = 1_000_000


def _unescape_entity(match: re.Match[str]) -> str:
    text = match.group(0)
    if text in _HTML_ENTITIES:
        return _HTML_ENTITIES[text]
    if text.startswith("&#"):
        unescaped = html.unescape(text)
        return text if ";" in unescaped else unescaped
    return text


def _c1_as_cp1252(match: re.Match[str]) -> str:
    char = match.group(0)
    try:
        return char.encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:  # 0x81 0x8d 0x8f 0x90 0x9d: "sloppy" codec keeps them
        return char


def _surrogate_pair(match: re.Match[str]) -> str:
    hi, lo = match.group(0)
    return chr(0x10000 + (ord(hi) - 0xD800) * 0x400 + (ord(lo) - 0xDC00))


def _fix_segment(text: str, unescape: bool) -> str:
    while True:
        original = text
        if unescape:
            text = _HTML_ENTITY_RE.sub(_unescape_entity, text)
        text = _C1_CONTROL_RE.sub(_c1_as_cp1252, text)
        text = text.translate(_LIGATURES).translate(_WIDTH_MAP)
        text = _SINGLE_QUOTE_RE.sub("'", _DOUBLE_QUOTE_RE.sub('"', text))
        for brk in ("\r\n", "\r", "\u2028", "\u2029", "\u0085"):
            text = text.replace(brk, "\n")
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_surrogate_pair, text))
        text = _ANSI_RE.sub("", text).translate(_CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == original:
            return text


def fix_text_lite(text: str) -> str:
    """``ftfy.fix_text(text)`` with default settings, minus mojibake repair."""
    out, pos, unescape = [], 0, True
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + _MAX_SEGMENT)
        segment = text[pos:end]
        if "<" in segment:  # ftfy's "auto": a literal '<' means HTML, keep entities from here on
            unescape = False
        out.append(_fix_segment(segment, unescape))
        pos = end
    return "".join(out)


def _fix_text(text: str) -> str:
    """``ftfy.fix_text`` (a runtime dependency: mojibake repair included); :func:`fix_text_lite` only where ftfy
    is not installed."""
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is in the runtime extra
        return fix_text_lite(text)
    return ftfy.fix_text(text)


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'`` cleaning: ftfy, unescape x2, whitespace, lower-case."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_ENCODER = _bytes_to_unicode()


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str, or raise ``TypeError`` saying what was given."""
    if isinstance(texts, str):
        raise TypeError(f"texts must be a list of str, got a single str {texts[:40]!r}; wrap it as [text]")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be a list of str, but texts[{i}] is {type(text).__name__}: {text!r:.60}")
    return list(texts)


class ClipTokenizer:
    """open_clip-compatible CLIP tokenizer backed by a ``tokenizer.json``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` holding the CLIP BPE (it is
            reconfigured in place: no normalizer, truncation or padding).
        context_length: output row length (e.g. 32 or 77).
        sot_id, eot_id, pad_id: start/end/pad ids; sot/eot are checked against the file.
    """

    def __init__(self, tokenizer: Any, context_length: int = 77, sot_id: int = 49406,
                 eot_id: int = 49407, pad_id: int = 0, source: str = "<tokenizer>") -> None:
        if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
        for name, tok_str, want in (("sot_id", SOT_TOKEN, sot_id), ("eot_id", EOT_TOKEN, eot_id)):
            got = tokenizer.token_to_id(tok_str)
            if got != want:
                raise ValueError(f"{source}: {tok_str} has id {got}, but {name}={want}; re-export the bundle")
        tokenizers = _import_tokenizers()
        tokenizer.normalizer = None  # clean_text() already did open_clip's exact cleaning
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self.source = source  # where the tokenizer came from (a path for from_file)
        self._split = tokenizers.pre_tokenizers.Split(
            tokenizers.Regex(CLIP_PATTERN), behavior="removed", invert=True
        )
        self.context_length, self.sot_id, self.eot_id, self.pad_id = context_length, sot_id, eot_id, pad_id
        self._special = {SOT_TOKEN: sot_id, EOT_TOKEN: eot_id}

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77, sot_id: int = 49406,
                  eot_id: int = 49407, pad_id: int = 0) -> "ClipTokenizer":
        """Load the ``tokenizer.json`` at ``path`` (written by the export step)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP tokenizer file not found: {path}; re-export the bundle "
                f"(the export step writes tokenizer.json next to the models)"
            )
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ValueError(f"{path} is not a readable tokenizer.json ({exc}); re-export the bundle") from exc
        return cls(tok, context_length, sot_id, eot_id, pad_id, source=str(path))

    @classmethod
    def from_manifest(cls, facts: Mapping[str, Any], bundle_dir: str | Path) -> "ClipTokenizer":
        """Load from the dict returned by ``build_clip_tokenizer_json`` (a manifest entry); its ``file`` must be a
        plain name that resolves inside ``bundle_dir`` (ValueError otherwise). Its sha256 is checked by
        :class:`~.bundle.Bundle` on load."""
        if facts.get("type") != "clip-bpe":
            raise ValueError(f"unsupported tokenizer type {facts.get('type')!r}; expected 'clip-bpe'")
        return cls.from_file(inside(Path(bundle_dir), facts.get("file"), "tokenizer file"),
                             int(facts["context_length"]), int(facts["sot_id"]), int(facts["eot_id"]),
                             int(facts["pad_id"]))

    def _token_ids(self, text: str) -> list[int]:
        """BPE ids of one cleaned text (no sot/eot)."""
        # U+0345 matches none of the `regex`-module alternatives under IGNORECASE (it
        # case-folds to a letter but is Mn), so open_clip skips it like a space.
        text = text.replace("\u0345", " ")
        if SOT_TOKEN not in text and EOT_TOKEN not in text:
            return self._tok.encode(text, add_special_tokens=False).ids
        # Literal special strings: follow open_clip's regex exactly (e.g. "!<end_of_text>"
        # is the symbol run "!<" followed by "end", not the special token).
        ids: list[int] = []
        for piece, _ in self._split.pre_tokenize_str(text):
            if piece in self._special:
                ids.append(self._special[piece])
            else:
                encoded = "".join(_BYTE_ENCODER[b] for b in piece.encode("utf-8"))
                ids.extend(t.id for t in self._tok.model.tokenize(encoded))
        return ids

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Tokenize ``texts``: (N x context_length int64 ids, which rows were truncated)."""
        texts = check_texts(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        cut = []
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self._token_ids(clean_text(text)), self.eot_id]
            cut.append(len(ids) > self.context_length)
            if cut[-1]:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out, cut

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """N x context_length int64 token ids, identical to open_clip's tokenizer."""
        return self.encode(texts)[0]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """For each text, whether it was cut to fit ``context_length``."""
        return self.encode(texts)[1]
