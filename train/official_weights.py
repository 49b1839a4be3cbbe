"""Reading the authors' released checkpoints (lang-seg's Lightning ``.ckpt``, TCL's ``tcl.pth``) safely and
checking them against an architecture written from the official code.

    state = read_state_dict("/models/demo_e200.ckpt", "lang-seg LSeg", ("state_dict", "model"), ("net.",))
    load_exact(model, state, "/models/demo_e200.ckpt", "lang-seg LSeg")

Files are read with ``torch.load(weights_only=True)``. Training checkpoints also pickle a few library objects
next to the tensors (Lightning's callback states and hyper-parameters, OmegaConf configs); they are not needed
and their libraries are not installed here, so *only* globals under :data:`INERT_PREFIXES` are replaced by an
inert stand-in class (it stores what it is given and runs nothing), via weights_only's own allowlist. Anything
else pickled in the file (functions, other classes) is refused, named.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .checkpoint import ACCEPTED_WEIGHTS, safe_torch_load

# Libraries whose pickled objects may sit next to the weights of a training checkpoint (never executed here).
INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "argparse.Namespace",
                  "mmcv.", "typing.Any")


class _Inert:
    """Stand-in for a pickled library class: "constructing" it gives an empty OrderedDict, which takes the
    object's items and attributes as weights_only's unpickler sets them (dict subclasses such as Lightning's
    AttributeDict, objects with a state); nothing of the library runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        return OrderedDict()


def _inert_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Inert,), {"__module__": name.rsplit(".", 1)[0]})


def read_checkpoint(path: str | Path, what: str) -> Any:
    """The object in a PyTorch file, read with ``weights_only`` (library objects of :data:`INERT_PREFIXES`
    replaced by inert stand-ins); a file holding anything else pickled is refused with its first such name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} not found; give the path of the released file")
    if path.suffix == ".safetensors":
        from .checkpoint import safe_safetensors_load

        return safe_safetensors_load(path, what)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - retried below with the allowlist, or refused with the reason
        pass
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint at all: the one-line refusal of safe_torch_load
        return safe_torch_load(path, what)
    if not names:  # refused for another reason (corrupt, truncated): the one-line refusal
        return safe_torch_load(path, what)
    foreign = [n for n in names if not n.startswith(INERT_PREFIXES)]
    if foreign:
        _refuse(path, what, foreign[0])
    with torch.serialization.safe_globals([(_inert_class(n), n) for n in names]):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not a readable {what} checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}); give {ACCEPTED_WEIGHTS}"
                             ) from None


def _refuse(path: Path, what: str, name: str) -> None:
    raise ValueError(f"{path} is not a safe {what} checkpoint: it pickles {name!r}, which reading it would import "
                     f"and run; give {ACCEPTED_WEIGHTS} (e.g. torch.save(model.state_dict(), ...))")


def read_state_dict(path: str | Path, what: str, containers: Iterable[str] = ("state_dict", "model"),
                    prefixes: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The state dict of a released file: the file itself or its first ``containers`` entry (Lightning
    ``state_dict``, TCL ``model``), with a ``prefixes`` entry (``net.``, ``module.``) stripped when every key has
    it. Non-tensor entries are refused."""
    obj = read_checkpoint(path, what)
    if isinstance(obj, dict):
        for key in containers:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds no state dict ({type(obj).__name__}); a {what} checkpoint is a state dict "
                         f"or a training checkpoint with one of {list(containers)}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entry {bad[0]!r} of the state dict is not a tensor; give a {what} state dict")
    for p in prefixes:
        if all(k.startswith(p) for k in obj):
            obj = {k[len(p):]: v for k, v in obj.items()}
    return obj


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
               ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` (floats cast to float32) only if the keys and shapes are exactly the
    model's (keys starting with ``ignore`` skipped on both sides); else one line naming the first missing and
    unexpected keys and their counts, or the first shape mismatch."""
    want = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore)}
    got = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing, unexpected = [k for k in want if k not in got], [k for k in got if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise ValueError(f"{path} does not fit the {what} architecture: keys {'; '.join(parts)}; pick the matching "
                         f"config or give the file this config was written for")
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"{path} does not fit the {what} architecture: {k} has shape {list(v.shape)}, the "
                             f"architecture {list(want[k].shape)}; pick the matching config")
    cast = {k: (v.float() if v.is_floating_point() else v) for k, v in got.items()}
    model.load_state_dict(cast, strict=not ignore)


def randomize(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of ``model``'s keys and shapes with random values (BatchNorm variances positive, counters
    kept): the stand-in for released weights in tests, so no parameter keeps a special initial value (zero
    gates, unit norms) that could hide a wiring mistake."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            scale = 0.5 if v.dim() <= 1 else (1.0 / max(1, v[0].numel())) ** 0.5
            out[k] = torch.randn(v.shape, generator=g) * scale + (1.0 if k.endswith(("norm1.weight", "norm2.weight",
                                                                                     "ln_1.weight", "ln_2.weight"))
                                                                  else 0.0)
    return out


def save_official_layout(state: dict[str, torch.Tensor], path: str | Path, layout: str) -> Path:
    """Write ``state`` as the authors' files are laid out: ``lightning`` (lang-seg: ``{"state_dict": {"net." +
    key: ...}, "epoch", "global_step", "pytorch-lightning_version", "hyper_parameters"}``), ``tcl`` (TCL's
    save_checkpoint: ``{"model": state_dict, "step", ...}``) or ``plain`` (the state dict itself)."""
    path = Path(path)
    if layout == "lightning":
        obj: Any = {"epoch": 199, "global_step": 0, "pytorch-lightning_version": "1.6.0",
                    "state_dict": {f"net.{k}": v for k, v in state.items()},
                    "hyper_parameters": {"backbone": "clip_vitl16_384", "num_features": 256, "arch_option": 0}}
    elif layout == "tcl":
        obj = {"model": dict(state), "step": 50000, "metrics": {"max_voc_miou": 0.0}}
    elif layout == "plain":
        obj = dict(state)
    else:
        raise ValueError(f"layout must be 'lightning', 'tcl' or 'plain', got {layout!r}")
    torch.save(obj, str(path))
    return path
