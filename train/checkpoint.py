"""Checkpoints: ``model.safetensors`` + ``config.json`` in one folder. No pickle anywhere.

``config.json`` holds what a loader needs (``kind``, ``architecture``), how inputs are prepared
(``preprocessing``, ``tokenizer``), how it was made (``recipe``) and what it scored (``metrics``).
Weights may be stored in float16 to keep committed checkpoints small; they load as float32.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from edgeseg.runtime.fileio import atomic_write_bytes, sha256_file, staged_dir  # noqa: F401 (re-exported)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder: an existing path, or the name of a bundled one (``clip_toy``, ``lseg_toy``)."""
    p = Path(path)
    if not p.exists() and (CHECKPOINT_DIR / str(path)).exists():
        p = CHECKPOINT_DIR / str(path)
    if not p.exists():
        bundled = sorted(d.name for d in CHECKPOINT_DIR.iterdir() if d.is_dir()) if CHECKPOINT_DIR.exists() else []
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; give a folder with {CONFIG} and {WEIGHTS} "
                                f"or a bundled name: {bundled}")
    if p.is_file():
        p = p.parent
    for name in (CONFIG, WEIGHTS):
        if not (p / name).exists():
            raise FileNotFoundError(f"checkpoint folder {p} has no {name}; it must hold {CONFIG} and {WEIGHTS}")
    return p


def save_checkpoint(folder: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any],
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write weights (floating tensors cast to ``dtype``) and config as one folder that appears whole: both files
    are written into a staged copy of the folder (other files of an existing folder carried over) and swapped
    in at once, so a crash leaves the previous checkpoint or the new one, never weights without their config."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    config = dict(config, storage_dtype=str(dtype).replace("torch.", ""))
    blob = save(tensors)
    config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    with staged_dir(folder) as tmp:
        if folder.is_dir():
            for f in folder.iterdir():
                if f.name not in (WEIGHTS, CONFIG) and f.is_file():
                    shutil.copy2(f, tmp / f.name)
        atomic_write_bytes(tmp / WEIGHTS, blob)
        atomic_write_bytes(tmp / CONFIG, (json.dumps(config, indent=2, sort_keys=False) + "\n").encode())
    return folder


KINDS = {"clip": "a CLIP", "lseg": "an LSeg", "ifseg": "an IFSeg", "tcl": "a TCL", "sam": "a SAM", "ldm": "a latent-diffusion"}  # config "kind" -> in messages


def load_checkpoint(folder: str | Path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (float32 state dict, config) of a checkpoint folder, checking the weights hash and, when given,
    that the config's ``kind`` is ``kind``."""
    from safetensors.torch import load_file

    folder = resolve_checkpoint(folder)
    config = json.loads((folder / CONFIG).read_text())
    if kind is not None and config.get("kind") != kind:
        raise ValueError(f"{folder} is a {config.get('kind')!r} checkpoint, not {KINDS.get(kind, repr(kind))} one")
    want = config.get("weights_sha256")
    if want and sha256_file(folder / WEIGHTS) != want:
        raise ValueError(f"{folder / WEIGHTS} does not match the sha256 in {folder / CONFIG}; the file is corrupt "
                         f"or was replaced: restore it (git checkout) or retrain")
    state = load_file(str(folder / WEIGHTS))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, config
