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


class TextEncoder:
    """Labels -> N x D unit-norm float32 embeddings; cached by (encoder hash, template, text).

    ``cache_dir``: a folder, "default" (:func:`default_cache_dir`) or None (memory only).
    """

    def __init__(self, bundle: Bundle, cache_dir: str | Path | None = "default", batch: int = 64):
        self.bundle = bundle
        self.tokenizer = ClipTokenizer.from_manifest(bundle.manifest["tokenizer"], bundle.path)
        self.max_batch = min(batch, bundle.spec("clip_text").input("input_ids").max[0])
        cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self.cache = TextEmbeddingCache(self._encode, bundle.component_hash("clip_text"), cache_dir)

    def _encode(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        outs = [self.bundle.run("clip_text", {"input_ids": ids[i:i + self.max_batch]})["text_embeds"]
                for i in range(0, len(ids), self.max_batch)]
        return np.concatenate(outs).astype(np.float32)

    def embed(self, texts: list[str], template: str = "{}") -> np.ndarray:
        return self.cache.get(texts, template)
