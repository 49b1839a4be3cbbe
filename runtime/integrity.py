"""Containment and completeness of a bundle's files, torch-free and onnx-free.

- :func:`check_name`: a file name the manifest gives must be a plain name (one path component, no ``..``, no
  separator, no drive), so that ``bundle / name`` can only be a file of the bundle folder.
- :func:`inside`: ``bundle / name`` resolved (symlinks followed) must still lie inside the bundle folder.
- :func:`external_data_locations`: the external-data files an ONNX model refers to, read straight from the
  protobuf wire format (the runtime-only install has no ``onnx`` package). The runtime refuses a model whose
  external data names a file the manifest does not list with its sha256, since ONNX Runtime would otherwise read
  unhashed weights from beside the model.

The walker follows every message that can hold a ``TensorProto`` (graph initializers, sparse initializers, node
attributes, subgraphs of If/Loop/Scan, functions, training info) and skips everything else by its length, so a
large single-file model costs one pass over its structure, not over its weights.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

__all__ = ["ProtoError", "check_name", "external_data_locations", "inside"]

# A plain file name: what export and build write (``clip_text.onnx``, ``unet_attn.onnx.data``, ``x.plan``).
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")


class ProtoError(ValueError):
    """The file is not a well-formed protobuf message (ONNX Runtime will refuse it too, with its own error)."""


def check_name(name: object, field: str) -> str:
    """``name`` if it is a plain file name inside the bundle folder; else ValueError naming ``field``."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if len(repr(name)) <= 240 else repr(name)[:237] + "..."
        raise ValueError(f"{field} = {shown}: must be a plain file name inside the bundle folder (no '/', "
                         f"'\\', '..' or absolute path)")
    return name


def inside(root: Path, name: str, field: str) -> Path:
    """``root / name`` after :func:`check_name`, refused when it resolves (through symlinks) outside ``root``."""
    path = Path(root) / check_name(name, field)
    real, top = path.resolve(), Path(root).resolve()
    if real != top and top not in real.parents:
        raise ValueError(f"{field} = {name!r}: {path} is a symlink to {real}, outside the bundle folder {top}")
    return path


# --- protobuf wire format --------------------------------------------------------------------------------------
# Field numbers of onnx.proto (checked against the onnx package's descriptors in the tests).
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _TRAINING, _FUNCTION, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _TENSOR: {13: _ENTRY},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE, 11: _ATTR},
}


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtoError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _skip(buf: memoryview, pos: int, end: int, wire: int, field: int) -> int:
    """Position after a field of wire type ``wire`` (groups included, as protobuf parsers accept them)."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        n, pos = _varint(buf, pos, end)
        pos += n
    elif wire == 3:
        while True:
            if pos >= end:
                raise ProtoError("unterminated group")
            tag, pos = _varint(buf, pos, end)
            if tag & 7 == 4:
                if tag >> 3 != field:
                    raise ProtoError("mismatched end of group")
                return pos
            pos = _skip(buf, pos, end, tag & 7, tag >> 3)
    else:
        raise ProtoError(f"wire type {wire}")
    if pos > end:
        raise ProtoError("field runs past the end of its message")
    return pos


def _entry(buf: memoryview, pos: int, end: int) -> tuple[str, str]:
    """(key, value) of a StringStringEntryProto."""
    out = {1: "", 2: ""}
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field in out and wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ProtoError("string runs past the end of its message")
            out[field] = bytes(buf[pos:pos + n]).decode("utf-8", "replace")
            pos += n
        else:
            pos = _skip(buf, pos, end, wire, field)
    return out[1], out[2]


def _walk(buf: memoryview) -> list[str]:
    locations: list[str] = []
    stack = [(_MODEL, 0, len(buf))]
    while stack:
        kind, pos, end = stack.pop()
        children = _CHILDREN.get(kind, {})
        while pos < end:
            tag, pos = _varint(buf, pos, end)
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ProtoError("field number 0")
            child = children.get(field)
            if child is None or wire != 2:
                pos = _skip(buf, pos, end, wire, field)
                continue
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ProtoError("sub-message runs past the end of its parent")
            if child == _ENTRY:
                key, value = _entry(buf, pos, pos + n)
                if key == "location":
                    locations.append(value)
            else:
                stack.append((child, pos, pos + n))
            pos += n
    return locations


def external_data_locations(path: str | Path) -> list[str] | None:
    """The distinct ``location`` values of the external-data tensors of the ONNX model at ``path``, in first-seen
    order; None when the file is not a well-formed protobuf (left for ONNX Runtime to refuse when it loads it)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                found = _walk(view)
            except ProtoError:
                return None
            finally:
                view.release()
    return list(dict.fromkeys(found))
