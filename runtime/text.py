"""Text embeddings from a bundle's ``clip_text`` component, through the persistent cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import Bundle
from .cache import TextEmbeddingCache
from .fileio import cache_root
from .tokenizer import ClipTokenizer


def default_cache_dir() -> Path:
    """``$EDGESEG_CACHE/text`` or ``~/.cache/edgeseg/text``."""
    return cache_root() / "text"


def text_cache_context(bundle: Bundle, component: str, tokenizer: str = "tokenizer") -> tuple[str, ...]:
    """What, besides the encoder graph's sha256 (the cache's ``encoder_id``) and the prompt, determines a text
    embedding of ``component``: the sha256 of its external weights, the tokenizer file's sha256, its context
    length, its special ids and its text cleaning rule (named only when it is not open_clip's). Part of every
    cache key, so a bundle whose tokenizer (or weights) differ never shares entries with another, whatever their
    encoder graphs."""
    tok = bundle.tokenizer_facts(tokenizer)
    ext = [f"external:{e.file}:{e.sha256}" for e in bundle.entry(component).external_data]
    key = (*ext, f"tokenizer:{tok['sha256']}", f"context_length:{tok['context_length']}",
           f"ids:{tok['sot_id']},{tok['eot_id']},{tok['pad_id']}")
    cleaning = tok.get("cleaning", "open_clip")  # the text cleaning rule (the SD tokenizer's is transformers')
    return key if cleaning == "open_clip" else (*key, f"cleaning:{cleaning}")


def output_dim(bundle: Bundle, component: str, output: str) -> int | None:
    """The number of values per row of ``output`` (the product of its fixed dims after the batch axis), or None
    when a dim is dynamic."""
    dims = bundle.spec(component).output(output).shape[1:]
    if not all(isinstance(d, int) for d in dims):
        return None
    n = 1
    for d in dims:
        n *= int(d)
    return n


class TextEncoder:
    """Labels -> N x D unit-norm float32 embeddings; cached by (encoder hash, tokenizer hash, context length,
    template, text) (:func:`text_cache_context`).

    ``cache_dir``: a folder, "default" (:func:`default_cache_dir`) or None (memory only).
    """

    def __init__(self, bundle: Bundle, cache_dir: str | Path | None = "default", batch: int = 64):
        self.bundle = bundle
        self.tokenizer = ClipTokenizer.from_manifest(bundle.tokenizer_facts("tokenizer"), bundle.path)
        self.max_batch = min(batch, bundle.spec("clip_text").input("input_ids").max[0])
        cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self.cache = TextEmbeddingCache(self._encode, bundle.component_hash("clip_text"), cache_dir,
                                        context=text_cache_context(bundle, "clip_text"),
                                        dim=output_dim(bundle, "clip_text", "text_embeds"))

    def _encode(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        outs = [self.bundle.run("clip_text", {"input_ids": ids[i:i + self.max_batch]})["text_embeds"]
                for i in range(0, len(ids), self.max_batch)]
        return np.concatenate(outs).astype(np.float32)

    def embed(self, texts: list[str], template: str = "{}") -> np.ndarray:
        return self.cache.get(texts, template)
