"""Crash-safe files and folders: every artifact appears complete under its final name, or not at all.

- :func:`atomic_write_bytes`: a temporary file beside the target, fsync, then rename.
- :func:`staged_dir`: a temporary folder beside the target, filled, then swapped in by :func:`replace_dir`
  (an atomic exchange on Linux, ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames whose gap the next run
  repairs).
- Temporary names carry the writer's PID: ``.NAME.PID.XXXX.tmp`` (and ``.NAME.old-PID`` in the two-rename
  gap). The next write of the same target removes what a dead writer left and, if the target is missing
  while its ``old`` copy survives, puts the old copy back (:func:`recover`).

Fault injection for the tests: ``EDGESEG_FAULT=write:N`` or ``rename:N`` ends the process with ``os._exit(137)``
(as ``kill -9`` would: no cleanup, no ``finally``) at the Nth data write or rename of that process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

FAULT_ENV = "EDGESEG_FAULT"
_fault_counts = {"write": 0, "rename": 0}


def fault_point(kind: str) -> None:
    """Die here (exit 137, no cleanup) if ``$EDGESEG_FAULT`` names this step: ``write:N`` / ``rename:N``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want == kind:
        _fault_counts[kind] += 1
        if _fault_counts[kind] == int(nth):
            os._exit(137)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(parent: Path, name: str) -> Iterator[tuple[Path, str, int]]:
    """(path, kind "tmp" | "old", writer pid) of what writers of ``parent/name`` left behind."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        n = p.name
        if n.startswith(f".{name}.old-"):
            pid = n[len(f".{name}.old-"):]
            if pid.isdigit():
                yield p, "old", int(pid)
        elif n.startswith(f".{name}.") and n.endswith(".tmp"):
            parts = n[len(f".{name}."):-len(".tmp")].split(".")  # PID and mkstemp's dot-free random part
            if len(parts) == 2 and parts[0].isdigit():
                yield p, "tmp", int(parts[0])


def recover(path: str | Path) -> list[str]:
    """Repair what an interrupted writer of ``path`` (file or folder) left: a missing ``path`` whose ``old`` copy
    survives gets it back; temporary files and folders of dead writers are removed. Returns what was done."""
    path = Path(path)
    done = []
    for p, kind, pid in sorted(_leftovers(path.parent, path.name), key=lambda x: x[1] == "tmp"):
        if _pid_alive(pid):
            continue
        if kind == "old" and not path.exists():
            os.replace(p, path)
            done.append(f"restored {path} from {p.name}")
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
        else:
            p.unlink(missing_ok=True)
            done.append(f"removed {p.name}")
    return done


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder; a file standing where a folder of the path must be is named in the error."""
    for p in [path.parent, *path.parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{p} is a file, so {path} cannot be written", str(path))
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) through a temporary file and ``os.replace``."""
    path = Path(path)
    _make_parent(path)
    recover(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            fault_point("write")  # a crash here leaves a half-written temporary file, never a half-written path
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; give the usual umask-based mode
        fault_point("rename")
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
    recover(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the call is missing."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``; ``dest`` is always either the old or the new folder, never
    half of one, and never missing: an existing ``dest`` is exchanged with ``new`` atomically (then removed
    under ``new``'s temporary name), or, without that system call, renamed to ``.dest.old-PID`` first, a gap
    that :func:`recover` repairs on the next write."""
    fault_point("rename")
    if dest.exists() and _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
        return
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        fault_point("rename")
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
