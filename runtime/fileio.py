"""Atomic file writes: a temporary file in the target folder, fsync, then rename. A crash or error never
leaves a half-written file under the final name. Folder swaps, file hashes. Shared by the runtime, training
and export."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; give the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block succeeds it becomes ``dest`` (see
    :func:`replace_dir`), when it raises it is removed. Readers never see a half-written folder."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``; an existing ``dest`` is swapped out first and removed only
    after, so ``dest`` is always either the old or the new folder, never half of one."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cache_root() -> Path:
    """Where edgeseg caches text embeddings and engines: ``$EDGESEG_CACHE`` or ``~/.cache/edgeseg``."""
    return Path(os.environ.get("EDGESEG_CACHE") or Path.home() / ".cache" / "edgeseg")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
