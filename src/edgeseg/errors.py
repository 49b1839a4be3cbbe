"""What the CLI prints when a command fails: one line for a user's mistake, the traceback for a bug.

A user's mistake is
- an error edgeseg raises on purpose (ValueError and its subclasses such as ``BundleError``, FileNotFoundError,
  RuntimeError, ImportError with an install hint, PermissionError, ...) — recognized by where it was raised:
  in edgeseg's own code, not inside a library;
- an operating-system refusal whatever raised it (disk full, read-only, permission denied, a folder where a file
  was meant, a file where a folder was meant);
- a missing optional dependency (ModuleNotFoundError for a package of one of the extras);
- running out of memory.
Anything else (TypeError, KeyError, AttributeError, IndexError anywhere; any exception raised inside numpy,
onnxruntime, PIL ...) is a bug in edgeseg: it keeps its traceback. ``edgeseg --debug ...`` (or
``EDGESEG_DEBUG=1``) shows the traceback for everything.
"""

from __future__ import annotations

import errno
from pathlib import Path
from types import TracebackType

_OWN_ROOTS: tuple[Path, ...] | None = None

# errno -> what it means for the user and the fix
OS_ERRORS = {
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied: pick a path you can write (or read)",
    errno.EPERM: "operation not permitted: pick another path",
    errno.EISDIR: "that is a folder: give a file name",
    errno.ENOTDIR: "a part of that path is a file, not a folder: pick another path",
    errno.ENAMETOOLONG: "the file name is too long: shorten it",
    errno.EEXIST: "a file is in the way of a folder that must be created: pick another path",
}
# top-level module of an optional dependency -> the extra that installs it
EXTRAS = {"torch": "export", "torchvision": "export", "open_clip": "export", "safetensors": "export",
          "diffusers": "export", "transformers": "export", "segment_anything": "export", "onnxscript": "export",
          "polygraphy": "export", "onnx": "build", "onnxruntime": "runtime", "tokenizers": "runtime",
          "PIL": "runtime", "tqdm": "runtime", "matplotlib": "bench", "spacy": "refer",
          "pytriton": "serve", "tritonclient": "serve"}
USER_TYPES = (ValueError, FileNotFoundError, RuntimeError, ImportError, PermissionError, IsADirectoryError,
              NotADirectoryError, FileExistsError)


def _own_roots() -> tuple[Path, ...]:
    """The folders holding edgeseg's code (the package and the real folders its links point to)."""
    global _OWN_ROOTS
    if _OWN_ROOTS is None:
        pkg = Path(__file__).parent
        roots = {pkg.resolve()} | {(pkg / p).resolve() for p in ("train", "export", "runtime", "serve")}
        _OWN_ROOTS = tuple(sorted(roots))
    return _OWN_ROOTS


def raised_by_edgeseg(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is edgeseg's own code."""
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_code.co_filename
    if name.startswith("<"):
        return False
    where = Path(name).resolve()
    return any(where == r or r in where.parents for r in _own_roots())


def user_message(exc: BaseException) -> str | None:
    """One line naming the problem and the fix for a user's mistake; None for a bug (keep the traceback)."""
    if isinstance(exc, MemoryError):
        return ("not enough memory for this input: use a smaller image (--max-pixels), fewer labels or "
                "expressions, or a machine with more memory")
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in EXTRAS:
        extra = EXTRAS[exc.name.split(".")[0]]
        return f"{exc.name} is not installed; this command needs it: pip install 'edgeseg[{extra}]'"
    if isinstance(exc, OSError) and exc.errno in OS_ERRORS:
        target = exc.filename if exc.filename is not None else ""
        return f"{target}: {OS_ERRORS[exc.errno]}" if target else OS_ERRORS[exc.errno]
    if isinstance(exc, USER_TYPES) and raised_by_edgeseg(exc):
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        return lines[0]
    return None
