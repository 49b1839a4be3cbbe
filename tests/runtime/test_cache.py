"""Tests for edgeseg.runtime.cache.TextEmbeddingCache (numpy only, fast)."""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.cache import MAGIC, TextEmbeddingCache

D = 8
ENC = "a" * 64


def vec_for(prompt: str, dim: int = D) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class FakeEncoder:
    """Deterministic encode_fn that records every batch it receives."""

    def __init__(self, dim: int = D) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> np.ndarray:
        self.calls.append(list(prompts))
        return np.stack([vec_for(p, self.dim) for p in prompts])

    @property
    def n_encoded(self) -> int:
        return sum(len(c) for c in self.calls)


def emb_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def only_file(root: Path) -> Path:
    files = emb_files(root)
    assert len(files) == 1, files
    return files[0]


def parse_file(path: Path) -> np.ndarray:
    blob = path.read_bytes()
    assert blob[:8] == MAGIC
    dim, code = struct.unpack_from("<IB3x", blob, 8)
    digest, payload = blob[16:48], blob[48:]
    assert code == 1 and len(payload) == 4 * dim
    assert hashlib.sha256(payload).digest() == digest
    return np.frombuffer(payload, dtype="<f4")


# ---------------------------------------------------------------- basics
def test_get_returns_ordered_float32_values():
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, ENC)
    out = cache.get(["dog", "cat"], template="a photo of a {}.")
    assert out.shape == (2, D) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], vec_for("a photo of a dog."))
    np.testing.assert_array_equal(out[1], vec_for("a photo of a cat."))
    again = cache.get(["cat", "dog"], template="a photo of a {}.")
    np.testing.assert_array_equal(again, out[::-1])
    assert len(enc.calls) == 1
    assert cache.stats == dict(memory_hits=2, disk_hits=0, misses=2, corrupt_recovered=0, encoded=2)
    assert len(cache) == 2


def test_returned_arrays_are_copies():
    cache = TextEmbeddingCache(FakeEncoder(), ENC)
    first = cache.get(["cat"])
    first[:] = 0.0
    np.testing.assert_array_equal(cache.get(["cat"])[0], vec_for("cat"))
    second = cache.get(["cat"])
    second += 1.0
    np.testing.assert_array_equal(cache.get(["cat"])[0], vec_for("cat"))


def test_lru_eviction_order():
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, ENC, capacity=2)
    cache.get(["a"]); cache.get(["b"])
    cache.get(["a"])            # a is now most recent, b least recent
    cache.get(["c"])            # evicts b
    assert len(cache) == 2
    enc.calls.clear()
    cache.get(["a"]); cache.get(["c"])
    assert enc.calls == []      # both still in memory
    cache.get(["b"])            # b was evicted -> re-encoded, evicts a (LRU)
    assert enc.calls == [["b"]]
    cache.get(["c"])
    cache.get(["a"])
    assert enc.calls == [["b"], ["a"]]


def test_batch_larger_than_capacity_still_complete():
    cache = TextEmbeddingCache(FakeEncoder(), ENC, capacity=2)
    texts = [f"t{i}" for i in range(5)]
    out = cache.get(texts)
    np.testing.assert_array_equal(out, np.stack([vec_for(t) for t in texts]))
    assert len(cache) == 2


def test_clear_memory_then_disk_hits(tmp_path):
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, ENC, cache_dir=tmp_path)
    ref = cache.get(["a", "b"])
    cache.clear_memory()
    assert len(cache) == 0
    np.testing.assert_array_equal(cache.get(["a", "b"]), ref)
    assert len(enc.calls) == 1 and cache.stats["disk_hits"] == 2


# ---------------------------------------------------------------- batching
def test_single_deduplicated_batch_of_misses_only():
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, ENC)
    out = cache.get(["a", "b", "a"], template="{}!")
    assert enc.calls == [["a!", "b!"]]
    np.testing.assert_array_equal(out[0], out[2])
    cache.get(["a", "c", "c", "d", "b"], template="{}!")
    assert enc.calls == [["a!", "b!"], ["c!", "d!"]]
    cache.get(["d", "a"], template="{}!")
    assert len(enc.calls) == 2
    assert cache.stats["encoded"] == enc.n_encoded == 4


def test_different_encoder_or_template_misses(tmp_path):
    enc = FakeEncoder()
    TextEmbeddingCache(enc, ENC, cache_dir=tmp_path).get(["cat"])
    other_enc = TextEmbeddingCache(enc, "b" * 64, cache_dir=tmp_path)
    other_enc.get(["cat"])
    assert other_enc.stats["misses"] == 1 and other_enc.stats["disk_hits"] == 0
    # same first 16 chars of encoder_id share a directory but never an entry
    same_prefix = TextEmbeddingCache(enc, "a" * 16 + "c" * 48, cache_dir=tmp_path)
    same_prefix.get(["cat"])
    assert same_prefix.stats["misses"] == 1
    restarted = TextEmbeddingCache(enc, ENC, cache_dir=tmp_path)
    restarted.get(["cat"], template="a photo of a {}.")
    assert restarted.stats["misses"] == 1
    restarted.get(["cat"])
    assert restarted.stats["disk_hits"] == 1
    assert len(enc.calls) == 4


# ---------------------------------------------------------------- persistence
def test_restart_gets_disk_hits_without_encoding(tmp_path):
    ref = TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=tmp_path).get(["cat", "dog", "bird"], "a {}")
    files = emb_files(tmp_path)
    assert len(files) == 3
    for f in files:
        assert f.suffix == ".emb" and f.parent.name == f.stem[:2]
        assert f.parent.parent == tmp_path / ENC[:16]
    enc2 = FakeEncoder()
    cache2 = TextEmbeddingCache(enc2, ENC, cache_dir=tmp_path)
    out = cache2.get(["dog", "cat", "bird"], "a {}")
    assert enc2.calls == []
    np.testing.assert_array_equal(out, ref[[1, 0, 2]])
    assert cache2.stats == dict(memory_hits=0, disk_hits=3, misses=0, corrupt_recovered=0, encoded=0)
    assert cache2.dim == D


def test_no_temporary_leftovers(tmp_path):
    cache = TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=tmp_path)
    for i in range(4):
        cache.get([f"x{i}", f"y{i}"])
    files = emb_files(tmp_path)
    assert len(files) == 8
    assert all(f.suffix == ".emb" and not f.name.startswith(".") for f in files)
    for f in files:
        parse_file(f)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:30])


def _flip_payload(p: Path) -> None:
    b = bytearray(p.read_bytes()); b[-3] ^= 0xFF; p.write_bytes(bytes(b))


def _bad_magic(p: Path) -> None:
    b = p.read_bytes(); p.write_bytes(b"GARBAGE!" + b[8:])


def _wrong_dim(p: Path) -> None:  # a valid-looking entry of another dim
    payload = np.ones(D + 1, "<f4").tobytes()
    p.write_bytes(MAGIC + struct.pack("<IB3x", D + 1, 1) + hashlib.sha256(payload).digest() + payload)


@pytest.mark.parametrize("damage", [_truncate, _flip_payload, _bad_magic, _wrong_dim])
def test_corrupt_file_recovered(tmp_path, damage):
    ref = TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=tmp_path).get(["cat", "dog"])
    target = next(f for f in emb_files(tmp_path) if np.array_equal(parse_file(f), ref[0]))
    damage(target)
    enc = FakeEncoder()
    cache = TextEmbeddingCache(enc, ENC, cache_dir=tmp_path)
    cache.get(["dog"])  # valid entry first, so the dim is known for the dim check
    with pytest.warns(RuntimeWarning, match=target.name):
        out = cache.get(["cat", "dog"])
    np.testing.assert_array_equal(out, ref)
    assert enc.calls == [["cat"]]
    assert cache.stats["corrupt_recovered"] == 1
    np.testing.assert_array_equal(parse_file(target), ref[0])  # rewritten valid
    assert len(emb_files(tmp_path)) == 2  # no temp files, no duplicates
    # a fresh process reads it back cleanly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc3 = FakeEncoder()
        np.testing.assert_array_equal(TextEmbeddingCache(enc3, ENC, cache_dir=tmp_path).get(["cat"])[0], ref[0])
        assert enc3.calls == []


def test_cache_dir_is_a_file_raises(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    with pytest.raises(ValueError, match="not_a_dir"):
        TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=f)


def test_uncreatable_cache_dir_warns_and_runs_in_memory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.warns(RuntimeWarning, match="not writable"):
        cache = TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=f / "sub")
    np.testing.assert_array_equal(cache.get(["cat"])[0], vec_for("cat"))
    assert cache.get(["cat"]).shape == (1, D) and cache.stats["memory_hits"] == 1


def test_failing_writes_warn_once_and_leave_no_temp(tmp_path, monkeypatch):
    def boom(src, dst):
        raise PermissionError(13, "read-only", str(dst))
    monkeypatch.setattr(os, "replace", boom)
    cache = TextEmbeddingCache(FakeEncoder(), ENC, cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning) as rec:
        out = cache.get(["a", "b"])
        cache.get(["c"])
    assert sum("not writable" in str(w.message) for w in rec) == 1
    np.testing.assert_array_equal(out[1], vec_for("b"))
    assert emb_files(tmp_path) == []


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("texts, pattern", [
    ([], "texts is empty"),
    ("cat", "single str"),
    (None, "list of str"),
    (["cat", 3], r"label 1 is not a str"),
    (["cat", "dog", "  "], r"label 2 is empty \('  '\); give a non-empty text"),
    ([""], r"label 0 is empty"),
])
def test_text_validation(texts, pattern):
    enc = FakeEncoder()
    with pytest.raises(ValueError, match=pattern):
        TextEmbeddingCache(enc, ENC).get(texts)
    assert enc.calls == []


@pytest.mark.parametrize("template", ["a photo", "{} and {}", "{0}", "{name}", "{:>5}", "{", 5])
def test_template_validation(template):
    with pytest.raises(ValueError, match="template"):
        TextEmbeddingCache(FakeEncoder(), ENC).get(["cat"], template=template)


def test_template_escaped_braces_ok():
    enc = FakeEncoder()
    TextEmbeddingCache(enc, ENC).get(["cat"], template="{{x}} {}")
    assert enc.calls == [["{x} cat"]]


@pytest.mark.parametrize("bad, pattern", [
    (lambda p: np.zeros((len(p) + 1, D), np.float32), r"shape \(2, 8\).*expected shape \(1, D\)"),
    (lambda p: np.zeros(D, np.float32), r"shape \(8,\)"),
    (lambda p: np.zeros((len(p), D), np.float64), r"dtype float64.*float32"),
    (lambda p: [[0.0] * D for _ in p], r"returned list"),
])
def test_bad_encoder_output(bad, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        TextEmbeddingCache(bad, ENC).get(["cat"])


def test_encoder_dim_change_rejected():
    dims = iter([D, D + 1])
    cache = TextEmbeddingCache(lambda p: np.zeros((len(p), next(dims)), np.float32), ENC)
    cache.get(["cat"])
    with pytest.raises(RuntimeError, match=r"shape \(1, 9\).*expected shape \(1, 8\)"):
        cache.get(["dog"])


def test_constructor_validation():
    with pytest.raises(ValueError, match="encoder_id"):
        TextEmbeddingCache(FakeEncoder(), "")
    with pytest.raises(ValueError, match="encoder_id"):
        TextEmbeddingCache(FakeEncoder(), "../../etc")
    with pytest.raises(ValueError, match="capacity"):
        TextEmbeddingCache(FakeEncoder(), ENC, capacity=-1)
