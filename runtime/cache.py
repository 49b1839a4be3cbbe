"""Two-level (memory LRU + disk) cache for text embeddings.

Text encoders are the slowest part of open-vocabulary segmentation at the
edge, yet the label set rarely changes between frames.  `TextEmbeddingCache`
keeps one float32 vector of dim D per (encoder, context, template, text), where
``context`` names everything else that determines the embedding (for a bundle's
text encoder: the tokenizer's sha256, context length and special ids, the
sha256 of any external weights; see :func:`edgeseg.runtime.text.text_cache_context`):

* in memory, in an LRU of ``capacity`` entries;
* optionally on disk, one small checksummed file per entry, written atomically,
  so a restarted process starts warm.

Entries are judged one by one: a corrupt entry (bad magic, truncated, checksum
mismatch) is deleted and recomputed; a checksum-valid entry whose dimension is
not the encoder's (``dim``, or what the encoder returned) is ignored and
recomputed, and never makes the cache fail or discard valid entries.

numpy + stdlib only: this module belongs to the slim runtime, which never
depends on the training stack (no deep-learning framework imports).
"""
from __future__ import annotations

import hashlib
import string
import struct
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .fileio import atomic_write_bytes

__all__ = ["TextEmbeddingCache"]

MAGIC = b"EDGEEMB1"
_HEADER = struct.Struct("<IB3x")  # dim (uint32), dtype code (uint8), 3 pad bytes
_DTYPE_F32 = 1  # the only dtype code written today: little-endian float32
_PREFIX_LEN = len(MAGIC) + _HEADER.size + 32  # magic + header + sha256(payload)
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _check_template(template: object) -> None:
    """Require exactly one bare ``{}`` field (``{{``/``}}`` escapes allowed)."""
    if not isinstance(template, str):
        raise ValueError(f"template must be a str containing '{{}}', got {type(template).__name__}")
    try:
        fields = [f for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None
    if len(fields) != 1 or fields[0][1:] != ("", "", None):
        raise ValueError(
            f"template {template!r} must contain exactly one '{{}}' placeholder "
            f"(found {len(fields)} field(s)); e.g. 'a photo of a {{}}.'")


def _check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a list, or raise ValueError naming the bad item."""
    if isinstance(texts, str):
        raise ValueError(f"texts must be a list of str, got a single str {texts!r}; wrap it: [{texts!r}]")
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty; give at least one label")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"label {i} is not a str (got {type(t).__name__}: {t!r}); give a non-empty text")
        if not t.strip():
            raise ValueError(f"label {i} is empty ({t!r}); give a non-empty text")
    return list(texts)


class TextEmbeddingCache:
    """Cache of text embeddings: N texts -> N x D float32 array.

    Args:
        encode_fn: maps a list of M already-formatted prompts to an (M, D)
            float32 array.  Called at most once per :meth:`get`, with only the
            deduplicated misses.
        encoder_id: identity of the text encoder (e.g. sha256 of its ONNX file).
            Part of every key, so entries of different encoders never mix.
        context: further strings that determine the embedding (tokenizer
            hash, context length...); part of every key.
        cache_dir: root of the persistent store, or None for memory only.
            Entries live at ``cache_dir/<encoder_id[:16]>/<key[:2]>/<key>.emb``.
        capacity: number of entries kept in the in-memory LRU (0 disables it).
        dim: the embedding dimension the encoder produces, if known (a bundle's
            manifest gives it); entries of another dimension are never used.

    Statistics (see :attr:`stats`) count unique keys per call: a text repeated
    inside one :meth:`get` is looked up and encoded once.  A corrupt disk entry
    (or a valid one of another dimension than the encoder's) counts in both
    ``corrupt_recovered`` and ``misses``.
    """

    def __init__(self, encode_fn: Callable[[list[str]], np.ndarray], encoder_id: str,
                 cache_dir: str | Path | None = None, capacity: int = 4096,
                 context: Sequence[str] = (), dim: int | None = None) -> None:
        if not callable(encode_fn):
            raise ValueError("encode_fn must be callable: list[str] -> (N, D) float32 array")
        if not isinstance(encoder_id, str) or not encoder_id:
            raise ValueError("encoder_id must be a non-empty str (e.g. sha256 of the encoder file)")
        if not set(encoder_id[:16]) <= _SAFE or encoder_id[:16].strip(".") == "":
            raise ValueError(f"encoder_id {encoder_id!r} must start with file-name-safe characters "
                             "[A-Za-z0-9._-] (a hex digest is ideal)")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        if isinstance(context, str) or not all(isinstance(c, str) for c in context):
            raise ValueError(f"context must be a sequence of str (e.g. the tokenizer's sha256), got {context!r:.80}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.context = tuple(context)
        self._encode_fn = encode_fn
        self.encoder_id = encoder_id
        self.capacity = capacity
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dim: int | None = dim  # the encoder's dimension: given, or learned from its first output
        self._seen_dim: int | None = None  # the dimension of the entries read so far, before the encoder spoke
        self._lock = threading.RLock()
        self._stats = dict(memory_hits=0, disk_hits=0, misses=0, corrupt_recovered=0, encoded=0)
        self._write_warned = False
        self._dir: Path | None = None
        self._writable = False
        if cache_dir is not None:
            root = Path(cache_dir).expanduser()
            if root.exists() and not root.is_dir():
                raise ValueError(f"cache_dir {str(root)!r} exists but is not a directory; "
                                 "give a directory path (or None for memory only)")
            self._dir = root / encoder_id[:16]
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._writable = True
            except OSError as exc:
                self._warn_unwritable(exc, stacklevel=3)
                self._dir = None

    # ------------------------------------------------------------------ public
    @property
    def stats(self) -> dict[str, int]:
        """Counters: memory_hits, disk_hits, misses, corrupt_recovered, encoded."""
        with self._lock:
            return dict(self._stats)

    @property
    def dim(self) -> int | None:
        """Embedding dim D: given, or known after the first encode or valid disk read."""
        return self._dim if self._dim is not None else self._seen_dim

    def __len__(self) -> int:
        """Number of entries held in memory."""
        return len(self._mem)

    def clear_memory(self) -> None:
        """Drop every in-memory entry (the disk store is left untouched)."""
        with self._lock:
            self._mem.clear()

    def get(self, texts: list[str], template: str = "{}") -> np.ndarray:
        """Embeddings of ``texts`` formatted with ``template``.

        Args:
            texts: N non-empty labels, e.g. ``["cat", "dog"]``.
            template: prompt with exactly one ``{}``, e.g. ``"a photo of a {}."``.

        Returns:
            (N, D) float32 array in the order of ``texts``; a fresh copy the
            caller may mutate freely.
        """
        texts = _check_texts(texts)
        _check_template(template)
        with self._lock:
            keys = [self._key(template, t) for t in texts]
            found: dict[str, np.ndarray] = {}
            misses: dict[str, str] = {}  # key -> text, insertion-ordered, deduplicated
            odd: dict[str, int] = {}  # key -> dim of a valid entry not of the expected dim (judged below)
            for key, text in zip(keys, texts):
                if key in found or key in misses:
                    continue
                vec = self._mem_get(key)
                if vec is not None:
                    self._stats["memory_hits"] += 1
                    found[key] = vec
                    continue
                vec, other = self._disk_read(key)
                if vec is not None:
                    self._stats["disk_hits"] += 1
                    self._mem_put(key, vec)
                    found[key] = vec
                    continue
                if other:
                    odd[key] = other
                self._stats["misses"] += 1
                misses[key] = text
            if misses:
                found.update(self._encode(misses, template))
            if self._dim is not None:  # the encoder has the last word on D: entries read before it spoke
                stale = {k: t for k, t in zip(keys, texts) if found[k].shape[0] != self._dim}
                if stale:  # only after a checksum-valid entry of another dim was read first (one extra call)
                    odd.update((k, int(found[k].shape[0])) for k in stale)
                    found.update(self._encode(stale, template))
                for key, dim in odd.items():
                    if dim != self._dim:
                        self._stats["corrupt_recovered"] += 1
                        where = str(self._path(key)) if self._dir is not None else f"entry {key[:16]}"
                        warnings.warn(f"text-embedding cache file {where!r} holds a {dim}-dim "
                                      f"embedding, the encoder gives {self._dim}-dim ones; ignored it and "
                                      f"recomputed", RuntimeWarning, stacklevel=3)
            return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    # ---------------------------------------------------------------- internals
    def _key(self, template: str, text: str) -> str:
        """sha256 hex over length-prefixed (encoder_id, *context, template, text)."""
        h = hashlib.sha256()
        for part in (self.encoder_id, *self.context, template, text):
            raw = part.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
        return h.hexdigest()

    def _mem_get(self, key: str) -> np.ndarray | None:
        vec = self._mem.get(key)
        if vec is not None and self._dim is not None and vec.shape[0] != self._dim:
            del self._mem[key]  # read before the encoder gave D, and of another dim: recompute it
            return None
        if vec is not None:
            self._mem.move_to_end(key)
        return vec

    def _mem_put(self, key: str, vec: np.ndarray) -> None:
        if self.capacity == 0:
            return
        self._mem[key] = vec
        self._mem.move_to_end(key)
        while len(self._mem) > self.capacity:
            self._mem.popitem(last=False)

    def _encode(self, misses: dict[str, str], template: str) -> dict[str, np.ndarray]:
        """One batched encode_fn call; returns key -> read-only (D,) float32 vector."""
        prompts = [template.format(t) for t in misses.values()]
        out = self._encode_fn(prompts)
        self._stats["encoded"] += len(prompts)
        want = f"({len(prompts)}, {self._dim if self._dim is not None else 'D'}) float32"
        if not isinstance(out, np.ndarray):
            raise RuntimeError(f"encode_fn returned {type(out).__name__}; expected np.ndarray of shape {want}")
        if (out.ndim != 2 or out.shape[0] != len(prompts) or out.shape[1] == 0
                or (self._dim is not None and out.shape[1] != self._dim) or out.dtype != np.float32):
            raise RuntimeError(f"encode_fn returned shape {tuple(out.shape)} dtype {out.dtype}; "
                               f"expected shape {want} for {len(prompts)} prompt(s)")
        self._dim = int(out.shape[1])
        result: dict[str, np.ndarray] = {}
        for key, row in zip(misses, out):
            vec = np.array(row, dtype=np.float32, copy=True)
            vec.setflags(write=False)
            result[key] = vec
            self._mem_put(key, vec)
            self._disk_write(key, vec)
        return result

    def _path(self, key: str) -> Path:
        assert self._dir is not None
        return self._dir / key[:2] / f"{key}.emb"

    def _disk_read(self, key: str) -> tuple[np.ndarray | None, int]:
        """Read and validate one entry: ``(vector, 0)``; ``(None, 0)`` when absent or corrupt (corrupt files are
        warned about and deleted); ``(None, dim)`` for a valid entry of another dim than the encoder's (or,
        before the encoder spoke, than the first entry read): left on disk, judged by :meth:`get` once the
        encoder has given D (a valid entry is never deleted; a wrong one is overwritten when recomputed)."""
        if self._dir is None:
            return None, 0
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None, 0  # absent (the common case) or unreadable: a plain miss
        problem = None
        expected = self._dim if self._dim is not None else self._seen_dim
        if len(blob) < _PREFIX_LEN or blob[:8] != MAGIC:
            problem = "bad magic or truncated header"
        else:
            dim, code = _HEADER.unpack_from(blob, 8)
            digest, payload = blob[8 + _HEADER.size:_PREFIX_LEN], blob[_PREFIX_LEN:]
            if code != _DTYPE_F32:
                problem = f"unknown dtype code {code}"
            elif dim == 0:
                problem = "dim 0"
            elif len(payload) != 4 * dim:
                problem = f"payload is {len(payload)} bytes, expected {4 * dim}"
            elif hashlib.sha256(payload).digest() != digest:
                problem = "checksum mismatch"
        if problem is not None:
            warnings.warn(f"corrupt text-embedding cache file {str(path)!r} ({problem}); "
                          "deleting it and recomputing", RuntimeWarning, stacklevel=3)
            self._stats["corrupt_recovered"] += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None, 0
        if expected is not None and dim != expected:
            return None, int(dim)
        vec = np.frombuffer(payload, dtype="<f4").astype(np.float32)  # own, writable copy
        vec.setflags(write=False)
        if self._dim is None and self._seen_dim is None:
            self._seen_dim = int(dim)
        return vec, 0

    def _disk_write(self, key: str, vec: np.ndarray) -> None:
        """Atomic write (:func:`edgeseg.runtime.fileio.atomic_write_bytes`): a crash leaves no partial entry, and
        the next write of the same entry removes a dead writer's temporary file."""
        if self._dir is None or not self._writable:
            return
        path = self._path(key)
        payload = np.ascontiguousarray(vec, dtype="<f4").tobytes()
        blob = MAGIC + _HEADER.pack(vec.shape[0], _DTYPE_F32) + hashlib.sha256(payload).digest() + payload
        try:
            if path.is_file() and path.read_bytes() == blob:
                return  # recomputed after a doubtful read, and already right: leave the valid entry alone
            atomic_write_bytes(path, blob)
        except OSError as exc:
            self._writable = False
            self._warn_unwritable(exc, stacklevel=5)

    def _warn_unwritable(self, exc: OSError, stacklevel: int) -> None:
        if not self._write_warned:
            self._write_warned = True
            warnings.warn(f"text-embedding cache directory is not writable ({exc}); "
                          "continuing with the in-memory cache only", RuntimeWarning, stacklevel=stacklevel)
