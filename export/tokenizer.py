"""Export open_clip's CLIP tokenizer as a self-contained HF ``tokenizer.json``.

The runtime (``edgeseg.runtime.tokenizer``) must tokenize prompts exactly like
``open_clip.get_tokenizer('ViT-B-16')`` (``open_clip.tokenizer.SimpleTokenizer``)
without torch or open_clip. This module rebuilds that tokenizer with the HF
``tokenizers`` library:

* model: byte-level BPE, vocab and merges read from open_clip's bundled
  ``bpe_simple_vocab_16e6.txt.gz`` exactly as ``SimpleTokenizer.__init__`` does
  (256 byte symbols, the same 256 with ``</w>``, 48894 merged symbols,
  ``<start_of_text>``=49406, ``<end_of_text>``=49407; 49408 ids in all), with
  ``end_of_word_suffix="</w>"``;
* pre-tokenizer: open_clip's regex (the special tokens, English contractions,
  letter runs, single digits, runs of other non-space symbols), then the GPT-2
  byte-to-unicode mapping (the same table as ``bytes_to_unicode()``);
* normalizer: NFC, Python-``str.split()`` whitespace collapsed to one space,
  strip, lower-case, U+0345 -> space (a ``regex``-module quirk). This
  approximates open_clip's cleaning for non-Python consumers; it does not do
  ftfy's fixes or HTML unescaping. The Python runtime
  replaces it with an exact stdlib re-implementation of the cleaning (see
  ``edgeseg.runtime.tokenizer.clean_text``);
* post-processor: ``<start_of_text> $A <end_of_text>``, truncation to
  ``context_length`` (which, like open_clip, keeps ``context_length - 2`` text
  tokens and ends with ``<end_of_text>``) and padding with id 0.

The same file serves Ref-Diff's SD tokenizer: its manifest entry adds
:data:`SD_TOKENIZER_FACTS` (pad with the end token, ``cleaning="transformers"``:
the runtime reads text as transformers' ``CLIPTokenizer`` of an SD 1.5 pipeline).
:func:`write_sd_tokenizer_folder` writes that pipeline's ``tokenizer/`` files
(``vocab.json``, ``merges.txt`` and its configs) from the same BPE.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
VOCAB_SIZE = 49408
#: Number of merges open_clip keeps: ``merges[1:49152-256-2+1]``.
NUM_MERGES = 49152 - 256 - 2

#: open_clip's pre-tokenization regex (``SimpleTokenizer.pat``, IGNORECASE).
CLIP_PATTERN = (
    r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
#: Every code point for which Python's ``str.isspace()`` is true (what
#: ``" ".join(text.split())`` collapses), as a regex class.
PY_WHITESPACE = (
    r"[\t\n\x{0B}\x{0C}\r\x{1C}-\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}"
    r"\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]+"
)


#: The SD text encoder's tokenizer entry on top of the CLIP one (see the module doc).
SD_TOKENIZER_FACTS = {"context_length": 77, "pad_id": EOT_ID, "cleaning": "transformers"}
#: transformers' names of the special tokens (SD 1.5's tokenizer/vocab.json).
HF_SPECIAL = {SOT_TOKEN: "<|startoftext|>", EOT_TOKEN: "<|endoftext|>"}


def bytes_to_unicode() -> dict[int, str]:
    """Return CLIP's (= GPT-2's) reversible byte -> printable-unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def default_bpe_path() -> Path:
    """Locate open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``."""
    import open_clip.tokenizer as oc_tok

    return Path(oc_tok.default_bpe())


def load_clip_vocab(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build ``(encoder, merges)`` exactly as ``SimpleTokenizer.__init__`` does.

    Args:
        bpe_path: the gzipped merges file; defaults to open_clip's bundled one.

    Returns:
        ``encoder`` (token string -> id, 49408 entries) and the ordered merges.
    """
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: malformed merge line (expected two symbols per line)")
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend([SOT_TOKEN, EOT_TOKEN])
    encoder = dict(zip(vocab, range(len(vocab))))
    if len(encoder) != VOCAB_SIZE or encoder[SOT_TOKEN] != SOT_ID or encoder[EOT_TOKEN] != EOT_ID:
        raise ValueError(
            f"{path}: unexpected CLIP vocab (size {len(encoder)}, sot {encoder.get(SOT_TOKEN)}, "
            f"eot {encoder.get(EOT_TOKEN)}); expected {VOCAB_SIZE}, {SOT_ID}, {EOT_ID}"
        )
    return encoder, merges  # type: ignore[return-value]


def build_clip_tokenizer(context_length: int, bpe_path: str | Path | None = None) -> Any:
    """Build an in-memory ``tokenizers.Tokenizer`` equivalent to open_clip's CLIP tokenizer.

    Args:
        context_length: padded/truncated sequence length (77 for OpenAI CLIP).
        bpe_path: optional merges file; defaults to open_clip's bundled one.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for sot and eot), got {context_length!r}")
    encoder, merges = load_clip_vocab(bpe_path)
    tok = Tokenizer(
        models.BPE(
            vocab=encoder,
            merges=merges,
            end_of_word_suffix="</w>",
            fuse_unk=False,
            dropout=None,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(Regex(PY_WHITESPACE), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
            # open_clip's regex (IGNORECASE) matches U+0345 with no alternative: it splits like a space.
            normalizers.Replace("\u0345", " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # "</w>" -> the byte-level symbol of b" " ("Ġ"), then bytes -> text.
    tok.decoder = decoders.Sequence([decoders.Replace("</w>", "\u0120"), decoders.ByteLevel()])
    # open_clip's regex matches the special strings in user text too; keep them atomic.
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=True) for t in (SOT_TOKEN, EOT_TOKEN)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}",
        special_tokens=[(SOT_TOKEN, SOT_ID), (EOT_TOKEN, EOT_ID)],
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=PAD_ID, pad_token="!")
    return tok


def build_clip_tokenizer_json(
    path: str | Path, context_length: int, bpe_path: str | Path | None = None
) -> dict[str, Any]:
    """Build the CLIP tokenizer and save it atomically as ``tokenizer.json`` at ``path``.

    Writes ``<path>.tmp`` first and then ``os.replace``-s it onto ``path``, so a
    crash never leaves a half-written file behind.

    Args:
        path: destination file (conventionally ``<bundle>/tokenizer.json``).
        context_length: sequence length the runtime will produce (e.g. 32 or 77).
        bpe_path: optional merges file; defaults to open_clip's bundled one.

    Returns:
        Manifest facts: ``{"file", "type", "context_length", "sot_id", "eot_id",
        "pad_id", "vocab_size", "lowercase"}``.
    """
    path = Path(path)
    tok = build_clip_tokenizer(context_length, bpe_path)
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise RuntimeError(f"built tokenizer has {tok.get_vocab_size()} ids, expected {VOCAB_SIZE}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tok.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "file": path.name,
        "type": "clip-bpe",
        "context_length": context_length,
        "sot_id": SOT_ID,
        "eot_id": EOT_ID,
        "pad_id": PAD_ID,
        "vocab_size": VOCAB_SIZE,
        "lowercase": True,
    }


def write_sd_tokenizer_folder(folder: str | Path, bpe_path: str | Path | None = None) -> Path:
    """Write a Stable Diffusion 1.5 pipeline's ``tokenizer/`` folder (what ``CLIPTokenizer.from_pretrained``
    reads) from the CLIP BPE: ``vocab.json`` (the 49408 ids, the special tokens named ``<|startoftext|>`` /
    ``<|endoftext|>``), ``merges.txt`` (``#version: 0.2`` + the 48894 merges), and ``tokenizer_config.json`` /
    ``special_tokens_map.json`` with SD 1.5's settings (model_max_length 77, pad = unk = eos = ``<|endoftext|>``,
    special tokens ``normalized``). Returns the folder."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, merges = load_clip_vocab(bpe_path)
    vocab = {HF_SPECIAL.get(k, k): v for k, v in encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")

    def token(content: str) -> dict[str, Any]:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    sot, eot = HF_SPECIAL[SOT_TOKEN], HF_SPECIAL[EOT_TOKEN]
    special = {"bos_token": token(sot), "eos_token": token(eot), "pad_token": eot, "unk_token": token(eot)}
    config = {"add_prefix_space": False, **special, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
