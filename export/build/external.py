"""ONNX external data at export and build: one ``<component>.onnx.data`` file per graph that needs it.

Protobuf caps a serialized model at 2 GB, so larger graphs (Stable Diffusion's UNet, SAM ViT-H's encoder) keep
their weights outside the ``.onnx`` file. The TorchScript exporter writes one loose file per tensor, named after
the tensor, beside the model; bundles instead hold exactly one data file per such component, named by the
exporter, listed in the manifest with its sha256 (``components.<name>.external_data``) and checked on load.

- :func:`save_model`: save a model proto as one file, or as ``dst`` + ``dst.data`` when it is external (forced,
  or above the protobuf limit);
- :func:`finalize` (export and build): rewrite whatever external layout a tool left into that one data file, and
  return the data file names to record; a single-file graph is left byte for byte as it is (its sha256 and the
  bundles of small models do not change);
- :func:`copy_graph`: copy a graph and its data file under a new name (a build's own names);
- :class:`DataWriter`, :func:`read_external`: stream tensors one by one from a source data file into a new
  one (page-aligned offsets), for conversions of graphs over 2 GB that never hold the whole model in memory.

Torch-free; the runtime reads the locations without onnx (``edgeseg.runtime.integrity``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeseg.runtime.integrity import external_data_locations

PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest message protobuf serializes
ALIGN = 4096  # bytes: tensor offsets in a data file written by DataWriter (page-aligned: mappable)


def data_name(graph: str | Path) -> str:
    """The one external-data file of the graph ``graph``: ``unet_attn.onnx`` -> ``unet_attn.onnx.data``."""
    return Path(graph).name + ".data"


def too_big(model: Any) -> bool:
    """Whether ``model`` (a ModelProto with its weights inside) exceeds what one protobuf file can hold."""
    return model.ByteSize() >= PROTOBUF_LIMIT


def save_model(model: Any, dst: str | Path, external: bool = False) -> list[str]:
    """Save ``model`` at ``dst``; with ``external`` (or above the protobuf limit) its tensors go to the one file
    ``dst.data`` instead. Returns the external-data file names the saved graph refers to ([] for one file)."""
    import onnx

    dst = Path(dst)
    data = dst.with_name(data_name(dst))
    if not external and not too_big(model):
        onnx.save(model, str(dst))
        data.unlink(missing_ok=True)
        return []
    for f in (dst, data):
        f.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=0)
    refs = external_data_locations(dst) or []
    if not refs:
        data.unlink(missing_ok=True)
    return refs


class DataWriter:
    """Write the tensors of one graph into its one external-data file, tensor by tensor (nothing else in memory).

    Each tensor starts at an offset aligned to :data:`ALIGN` bytes (the page size, so ONNX Runtime can map
    the file instead of copying it; within ONNX's 64 KiB padding limit). Use as a context manager::

        with DataWriter(dst.with_name(data_name(dst))) as w:
            w.write(tensor, array_bytes)      # tensor: its TensorProto, now pointing at the data file
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.written = 0  # tensors written

    def __enter__(self) -> "DataWriter":
        self.path.unlink(missing_ok=True)
        self._f = open(self.path, "wb")
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
        if exc[0] is not None:
            self.path.unlink(missing_ok=True)

    def write(self, tensor: Any, data: bytes | memoryview) -> None:
        """Append ``data`` (the tensor's raw little-endian bytes) and point ``tensor`` at it (raw_data cleared)."""
        from onnx import TensorProto

        pos = self._f.tell()
        pad = -pos % ALIGN
        if pad:
            self._f.write(b"\0" * pad)
        offset = pos + pad
        self._f.write(data)
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = TensorProto.EXTERNAL
        self.written += 1


def external_info(tensor: Any) -> dict[str, str]:
    """The external-data fields of a TensorProto ({"location", "offset", "length", ...}); {} when inline."""
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return {}
    return {e.key: e.value for e in tensor.external_data}


def read_external(tensor: Any, folder: str | Path) -> bytes:
    """The raw bytes of an external-data tensor, read from its file in ``folder`` (one tensor, not the model)."""
    import numpy as np
    from onnx import helper

    info = external_info(tensor)
    loc = info.get("location", "")
    if _outside(loc):
        raise ValueError(f"tensor {tensor.name!r} refers to external data {loc!r} outside its folder; refusing "
                         f"to read it")
    offset = int(info.get("offset", 0))
    if "length" in info:
        length = int(info["length"])
    else:
        n = 1
        for d in tensor.dims:
            n *= d
        length = n * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    path = Path(folder) / loc
    data = np.fromfile(path, dtype=np.uint8, count=length, offset=offset)
    if data.size != length:
        raise ValueError(f"tensor {tensor.name!r}: {path} holds {data.size} of its {length} bytes at offset "
                         f"{offset}; the external-data file is truncated: re-export the bundle")
    return data.tobytes()


def _remove_loose(folder: Path, names: list[str], keep: set[str]) -> None:
    for n in names:
        if not _outside(n) and n not in keep:  # never delete anything outside the folder a tool wrote into
            (folder / n).unlink(missing_ok=True)


def finalize(graph: str | Path, external: bool | None = None) -> list[str]:
    """Bring the graph at ``graph`` to the bundle layout: a single file stays as it is (``external=True``: its
    weights are moved to ``<graph>.data``, as for a graph over 2 GB); external data (loose tensor files, or a data
    file of another name) is rewritten into ``<graph>.data``. Returns the external-data file names now referred
    to ([] or [``<graph>.data``]), for the manifest."""
    import onnx

    graph = Path(graph)
    refs = external_data_locations(graph)
    if refs is None:
        raise ValueError(f"{graph} is not a readable ONNX model; the export or conversion that wrote it failed")
    want = data_name(graph)
    if not refs and external:
        return save_model(onnx.load(str(graph)), graph, external=True)
    if not refs or refs == [want]:
        return refs
    bad = [r for r in refs if _outside(r)]
    if bad:
        raise ValueError(f"{graph} refers to external data {bad} outside its folder; refusing to read it")
    model = onnx.load(str(graph))  # every tensor in memory, from the loose files beside the graph
    out = save_model(model, graph, external=True)
    _remove_loose(graph.parent, refs, keep={graph.name, *out})
    return out


def _outside(location: str) -> bool:
    """Whether a tool-written location (a tensor name, as sanitized by the exporter) leaves its folder."""
    return (not location or location in (".", "..") or "/" in location or "\\" in location or ":" in location
            or Path(location).is_absolute())


def copy_graph(src: str | Path, dst: str | Path, src_data: list[str] | None = None) -> list[str]:
    """Copy the graph ``src`` (and its external data, the file names ``src_data`` beside it) to ``dst``.
    Byte copies when the names already follow the bundle layout; otherwise the graph is saved again so that it
    refers to ``<dst>.data``. Returns the external-data names of ``dst``."""
    src, dst = Path(src), Path(dst)
    refs = external_data_locations(src) if src_data is None else list(src_data)
    if not refs:
        shutil.copyfile(src, dst)
        return []
    if src.name == dst.name and refs == [data_name(src)]:
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_name(refs[0]), dst.with_name(refs[0]))
        return refs
    import onnx

    return save_model(onnx.load(str(src)), dst, external=True)
