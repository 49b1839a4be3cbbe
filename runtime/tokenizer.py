"""CLIP text tokenizers for the slim runtime (numpy + HF ``tokenizers`` + ``ftfy``; no torch/open_clip).

One BPE (the ``tokenizer.json`` written by ``edgeseg.export.tokenizer.build_clip_tokenizer_json``), two ways
of reading text, chosen by the manifest entry's ``cleaning``:

* ``"open_clip"`` (the ``tokenizer`` entry; the default): exactly what
  ``open_clip.get_tokenizer('ViT-B-16')(texts)`` produces (``SimpleTokenizer``). Cleaning in open_clip's order:
  ``ftfy.fix_text`` (ftfy is a runtime dependency, so mojibake repair such as ``"cafÃ©"`` -> ``"café"`` is
  exact) -> ``html.unescape`` twice -> strip -> collapse whitespace (``str.split``) -> ``str.lower``; then
  open_clip's regex and the BPE. Padding with 0.
* ``"transformers"`` (Ref-Diff's ``sd_tokenizer``): exactly what transformers' ``CLIPTokenizer`` loaded from a
  Stable Diffusion 1.5 pipeline's ``tokenizer/`` folder produces (``vocab.json`` + ``merges.txt``, the same BPE
  with the special tokens named ``<|startoftext|>`` / ``<|endoftext|>``) as SD pipelines call it
  (``padding="max_length", max_length=77, truncation=True``): transformers 5's ``CLIPTokenizer`` (and 4.x's
  ``CLIPTokenizerFast``) runs the ``tokenizers`` pipeline rebuilt here with the same library: NFC, whitespace runs ->
  one space, per-character lower-case (no ftfy, no HTML unescaping: ``"&amp;"``, curly quotes, ligatures,
  full-width forms and a BOM are tokenized as written), its own regex, byte-level pre-tokenization, and the
  literal special strings of its added tokens (``<|startoftext|>`` also upper-cased; ``<|endoftext|>`` only as
  written). transformers 4.x's slow ``CLIPTokenizer`` (what diffusers loaded under transformers < 5) differed:
  ``ftfy.fix_text`` + whitespace + ``str.lower`` when ftfy was installed, BERT's ``BasicTokenizer`` otherwise.

Both: ``[sot, tokens..., eot]`` padded to ``context_length``; a text that is too long keeps
``context_length - 1`` ids and its last id is replaced by eot (open_clip's rule, and transformers' truncation
to ``max_length``, which keeps the same ``context_length - 2`` text tokens). The json's own (approximate)
normalizer is not used.

Known, documented difference from open_clip (``"open_clip"`` only; outside ToyWorld / plain text):
letter/number classes come from the Oniguruma regex engine inside ``tokenizers`` instead of the ``regex``
module. Checked over U+0080..U+2FFFF (Python 3.11, regex 2026.11, tokenizers 0.23): they agree everywhere
except ~1500 code points that are unassigned in Python 3.11's Unicode 14 (assigned in later Unicode versions,
which the two engines know to different extents), e.g. U+0558, U+088F, U+A7CE. U+0345 is handled specially
(see ``_token_ids``). Literal ``<start_of_text>``/``<end_of_text>`` in a prompt are tokenized exactly like
open_clip (special id, unless glued to a preceding symbol run).
"""

from __future__ import annotations

import html
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
#: How a tokenizer reads text (the manifest entry's ``cleaning``; see the module doc).
CLEANINGS = ("open_clip", "transformers")
#: transformers' CLIPTokenizer: its special tokens, regex and normalizer (tokenization_clip.py, transformers 5).
HF_SOT_TOKEN = "<|startoftext|>"
HF_EOT_TOKEN = "<|endoftext|>"
HF_CLIP_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"edgeseg.runtime needs the 'tokenizers' package to tokenize text prompts; "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return tokenizers


def _import_ftfy() -> Any:
    try:
        import ftfy
    except ImportError as exc:  # pragma: no cover - ftfy is in the runtime extra
        raise ImportError(f"edgeseg.runtime needs the 'ftfy' package to clean text prompts as open_clip does; "
                          f"install it with: {INSTALL_HINT}") from exc
    return ftfy


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'`` cleaning: ftfy, unescape x2, whitespace, lower-case."""
    text = html.unescape(html.unescape(_import_ftfy().fix_text(text))).strip()
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
    """CLIP tokenizer backed by a ``tokenizer.json``: open_clip's (``cleaning="open_clip"``) or transformers'
    ``CLIPTokenizer`` of an SD 1.5 pipeline (``cleaning="transformers"``); see the module doc.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` holding the CLIP BPE (open_clip: reconfigured in place, no
            normalizer, truncation or padding; transformers: its BPE model is reused in a new pipeline).
        context_length: output row length (e.g. 32 or 77).
        sot_id, eot_id, pad_id: start/end/pad ids; sot/eot are checked against the file.
        cleaning: one of :data:`CLEANINGS`.
    """

    def __init__(self, tokenizer: Any, context_length: int = 77, sot_id: int = 49406,
                 eot_id: int = 49407, pad_id: int = 0, source: str = "<tokenizer>",
                 cleaning: str = "open_clip") -> None:
        if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
        if cleaning not in CLEANINGS:
            raise ValueError(f"{source}: unknown tokenizer cleaning {cleaning!r}; use one of {list(CLEANINGS)} "
                             f"(or re-export the bundle)")
        for name, tok_str, want in (("sot_id", SOT_TOKEN, sot_id), ("eot_id", EOT_TOKEN, eot_id)):
            got = tokenizer.token_to_id(tok_str)
            if got != want:
                raise ValueError(f"{source}: {tok_str} has id {got}, but {name}={want}; re-export the bundle")
        tokenizers = _import_tokenizers()
        self.cleaning, self.source = cleaning, source  # source: where the tokenizer came from (a path)
        self.context_length, self.sot_id, self.eot_id, self.pad_id = context_length, sot_id, eot_id, pad_id
        self._special = {SOT_TOKEN: sot_id, EOT_TOKEN: eot_id}
        self._split = tokenizers.pre_tokenizers.Split(
            tokenizers.Regex(CLIP_PATTERN), behavior="removed", invert=True
        )
        self._remap: dict[int, int] = {}
        if cleaning == "transformers":
            self._tok = self._transformers_pipeline(tokenizers, tokenizer.model)
            return
        tokenizer.normalizer = None  # clean_text() already did open_clip's exact cleaning
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer

    def _transformers_pipeline(self, tokenizers: Any, bpe: Any) -> Any:
        """transformers' CLIPTokenizer pipeline around the same BPE: its normalizer, pre-tokenizer and added
        special tokens (flags as transformers 5 sets them from SD 1.5's tokenizer_config.json). The added
        tokens get new ids here (the vocab names them as open_clip does); they are mapped back to sot/eot."""
        n, p = tokenizers.normalizers, tokenizers.pre_tokenizers
        tok = tokenizers.Tokenizer(bpe)
        tok.normalizer = n.Sequence([n.NFC(), n.Replace(tokenizers.Regex(r"\s+"), " "), n.Lowercase()])
        tok.pre_tokenizer = p.Sequence([
            p.Split(tokenizers.Regex(HF_CLIP_PATTERN), behavior="removed", invert=True),
            p.ByteLevel(add_prefix_space=False),
        ])
        tok.add_special_tokens([tokenizers.AddedToken(HF_SOT_TOKEN, normalized=True, special=True),
                                tokenizers.AddedToken(HF_EOT_TOKEN, normalized=False, special=True)])
        self._remap = {tok.token_to_id(HF_SOT_TOKEN): self.sot_id, tok.token_to_id(HF_EOT_TOKEN): self.eot_id}
        return tok

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77, sot_id: int = 49406,
                  eot_id: int = 49407, pad_id: int = 0, cleaning: str = "open_clip") -> "ClipTokenizer":
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
        return cls(tok, context_length, sot_id, eot_id, pad_id, source=str(path), cleaning=cleaning)

    @classmethod
    def from_manifest(cls, facts: Mapping[str, Any], bundle_dir: str | Path) -> "ClipTokenizer":
        """Load from the dict returned by ``build_clip_tokenizer_json`` (a manifest entry); its ``file`` must be a
        plain name that resolves inside ``bundle_dir`` (ValueError otherwise). Its sha256 is checked by
        :class:`~.bundle.Bundle` on load. ``cleaning`` (absent: ``"open_clip"``) picks the text reading."""
        if facts.get("type") != "clip-bpe":
            raise ValueError(f"unsupported tokenizer type {facts.get('type')!r}; expected 'clip-bpe'")
        return cls.from_file(inside(Path(bundle_dir), facts.get("file"), "tokenizer file"),
                             int(facts["context_length"]), int(facts["sot_id"]), int(facts["eot_id"]),
                             int(facts["pad_id"]), cleaning=str(facts.get("cleaning", "open_clip")))

    def _text_ids(self, text: str) -> list[int]:
        """BPE ids of one raw text (no sot/eot), read as :attr:`cleaning` says."""
        if self.cleaning == "transformers":
            ids = self._tok.encode(text, add_special_tokens=False).ids
            return [self._remap.get(i, i) for i in ids]
        return self._token_ids(clean_text(text))

    def _token_ids(self, text: str) -> list[int]:
        """BPE ids of one open_clip-cleaned text (no sot/eot)."""
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
            ids = [self.sot_id, *self._text_ids(text), self.eot_id]
            cut.append(len(ids) > self.context_length)
            if cut[-1]:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out, cut

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """N x context_length int64 token ids, identical to the reference tokenizer (see the module doc)."""
        return self.encode(texts)[0]

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """For each text, whether it was cut to fit ``context_length``."""
        return self.encode(texts)[1]
