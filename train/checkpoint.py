"""Checkpoints: ``model.safetensors`` + ``config.json`` in one folder. No pickle anywhere.

``config.json`` holds what a loader needs (``kind``, ``architecture``), how inputs are prepared
(``preprocessing``, ``tokenizer``), how it was made (``recipe``) and what it scored (``metrics``).
Weights may be stored in float16 to keep committed checkpoints small; they load as float32.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from edgeseg.runtime.fileio import atomic_write_bytes, sha256_file, staged_dir  # noqa: F401 (re-exported)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, looked up in this order:

    1. a path with a folder part (``./lseg_toy``, ``/data/ckpt``, ``runs/x``): that path, nothing else;
    2. a bare name (``lseg_toy``): a local folder of that name if it is a checkpoint, else the bundled checkpoint
       of that name (a local folder of the same name that is not a checkpoint, e.g. a bundle written with
       ``--out lseg_toy``, is passed over with a warning saying so), else the local path.
    Errors say which of the two was found."""
    s, p = str(path), Path(path)
    explicit = p.is_absolute() or len(p.parts) > 1 or s.startswith(".")
    bundled = CHECKPOINT_DIR / s
    if not explicit and not _is_checkpoint(p) and _is_checkpoint(bundled):
        if p.exists():
            warnings.warn(f"the local {'folder' if p.is_dir() else 'file'} {s!r} is not a checkpoint (no {CONFIG} + "
                          f"{WEIGHTS}); using the bundled checkpoint {s!r} ({bundled}); write ./{s} to mean the "
                          f"local one", stacklevel=2)
        return bundled
    if not p.exists():
        names = sorted(d.name for d in CHECKPOINT_DIR.iterdir() if d.is_dir()) if CHECKPOINT_DIR.exists() else []
        raise FileNotFoundError(f"checkpoint {s!r} not found, neither as a local path nor as a bundled name; give a "
                                f"folder with {CONFIG} and {WEIGHTS} or a bundled name: {names}")
    if p.is_file():
        p = p.parent
    for name in (CONFIG, WEIGHTS):
        if not (p / name).exists():
            raise FileNotFoundError(f"checkpoint {s!r} is the local folder {p}, which has no {name}; a checkpoint "
                                    f"folder holds {CONFIG} and {WEIGHTS}")
    return p


# What the loaders of user weight files accept, named in their errors.
ACCEPTED_WEIGHTS = ("a .safetensors file, or a PyTorch file (.pth/.pt/.ckpt/.bin) holding only tensors (a state "
                    "dict as torch.save writes it)")


def safe_torch_load(path: str | Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``; a file that cannot be read that way (pickled code, another
    format, a corrupt or truncated file) gets one line saying it is not a safe checkpoint and what is accepted."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and format errors differ between torch versions
        raise ValueError(f"{path} is not a safe {what} checkpoint: it cannot be read as tensors only "
                         f"({type(e).__name__}; corrupt, truncated, or holding pickled code); give "
                         f"{ACCEPTED_WEIGHTS}") from None


def safe_safetensors_load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with one line for a file that is not a valid safetensors file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError
        raise ValueError(f"{path} is not a valid .safetensors {what} file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}); give {ACCEPTED_WEIGHTS}") from None


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
