"""Crash safety: every artifact (checkpoint folder, bundle, cache entry, overlay, JSON) appears complete or not at
all, and the next run cleans or repairs what an interrupted one left.

Deterministic fault injection: ``EDGESEG_FAULT=write:N`` / ``rename:N`` makes the writing process exit at once
(status 137, no cleanup, as ``kill -9``) at its Nth data write or rename (``edgeseg.runtime.fileio``). Each
scenario is run with every N until the writer finishes without reaching the fault; after each crash the
artifact must load as the old or the new version (never missing, never mixed), and after one clean rerun no
temporary file or folder may remain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest



def faults(writes: int, renames: int) -> list[str]:
    """Every fault point of a writer with this many data writes and renames, and one past the last of each."""
    return [f"write:{n}" for n in range(1, writes + 2)] + [f"rename:{n}" for n in range(1, renames + 2)]


def run(script: str, *args: str, fault: str | None = None) -> int:
    env = dict(os.environ)
    env.pop("EDGESEG_FAULT", None)
    if fault:
        env["EDGESEG_FAULT"] = fault
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode in (0, 137), out.stderr[-3000:]
    return out.returncode


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") and
                  (p.name.endswith(".tmp") or ".old-" in p.name))


CHECKPOINT = """
    import sys, torch
    from edgeseg.train.checkpoint import save_checkpoint
    v = float(sys.argv[2])
    save_checkpoint(sys.argv[1], {"w": torch.full((64, 64), v), "b": torch.full((8,), v)}, {"kind": "toy", "v": v})
"""


def test_a_killed_checkpoint_save_leaves_the_old_or_the_new_checkpoint(tmp_path):
    from edgeseg.train.checkpoint import load_checkpoint

    folder = tmp_path / "ckpt"
    assert run(CHECKPOINT, str(folder), "1") == 0
    (folder / "notes.txt").write_text("kept")
    crashed = 0
    for fault in faults(writes=2, renames=3):  # weights, config; both files and the folder swap
        crashed += run(CHECKPOINT, str(folder), "2", fault=fault) == 137
        state, cfg = load_checkpoint(folder, "toy")  # loads: hash and config agree
        assert cfg["v"] in (1.0, 2.0) and float(state["w"][0, 0]) == cfg["v"] == float(state["b"][0])
        assert (folder / "notes.txt").read_text() == "kept"
        assert run(CHECKPOINT, str(folder), "1") == 0  # a clean rerun repairs and cleans
        assert leftovers(tmp_path) == []
    assert crashed == 5, "every fault point must be reached, or the test tests nothing"


BUNDLE = """
    import sys
    from edgeseg.runtime.fileio import atomic_write_bytes, staged_dir
    with staged_dir(sys.argv[1]) as tmp:
        for name in ("a.onnx", "b.onnx", "manifest.json"):
            atomic_write_bytes(tmp / name, (sys.argv[2] * 5000).encode())
"""


def test_a_killed_bundle_replacement_never_leaves_the_bundle_missing_or_mixed(tmp_path):
    dest = tmp_path / "engines" / "b"
    assert run(BUNDLE, str(dest), "1") == 0
    crashed = 0
    for fault in faults(writes=3, renames=4):  # three files, then the folder swap
        crashed += run(BUNDLE, str(dest), "2", fault=fault) == 137
        assert dest.is_dir(), f"{fault}: nothing under the bundle's name"
        contents = {(dest / n).read_text() for n in ("a.onnx", "b.onnx", "manifest.json")}
        assert contents in ({"1" * 5000}, {"2" * 5000}), f"{fault}: a mixed or partial bundle"
        assert run(BUNDLE, str(dest), "1") == 0
        assert leftovers(tmp_path) == []
    assert crashed == 7


def test_the_two_rename_fallback_gap_is_repaired_by_the_next_write(tmp_path, monkeypatch):
    """Without an atomic exchange, a crash between moving the old folder aside and moving the new one in leaves
    only ``.NAME.old-PID``: the next write of the same bundle puts it back before anything else."""
    from edgeseg.runtime import fileio

    dest = tmp_path / "b"
    dest.mkdir()
    (dest / "manifest.json").write_text("old")
    old = tmp_path / ".b.old-999999999"  # a writer that no longer exists
    os.replace(dest, old)
    stale = tmp_path / ".b.999999999.abcd1234.tmp"
    stale.mkdir()
    assert fileio.recover(dest) == [f"restored {dest} from {old.name}", f"removed {stale.name}"]
    assert (dest / "manifest.json").read_text() == "old" and leftovers(tmp_path) == []
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    with fileio.staged_dir(dest) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (dest / "manifest.json").read_text() == "new" and leftovers(tmp_path) == []


CACHE = """
    import sys, numpy as np
    from edgeseg.runtime.cache import TextEmbeddingCache
    enc = lambda prompts: np.stack([np.full(16, len(p), np.float32) for p in prompts])
    TextEmbeddingCache(enc, "e" * 64, sys.argv[1]).get(["circle", "square", "a red star"])
"""


def test_a_killed_cache_write_leaves_only_complete_entries(tmp_path):
    from edgeseg.runtime.cache import TextEmbeddingCache

    calls = []

    def enc(prompts):
        calls.append(list(prompts))
        return np.stack([np.full(16, len(p), np.float32) for p in prompts])

    crashed = 0
    for fault in ("write:1", "write:2", "write:3", "rename:1", "rename:2", "rename:3"):
        root = tmp_path / fault.replace(":", "_")
        crashed += run(CACHE, str(root), fault=fault) == 137
        calls.clear()
        got = TextEmbeddingCache(enc, "e" * 64, root).get(["circle", "square", "a red star"])
        assert np.array_equal(got[:, 0], [6, 6, 10])  # complete entries read back, missing ones recomputed
        assert sum(len(c) for c in calls) <= 3
        assert run(CACHE, str(root)) == 0
    assert crashed == 6


OUTPUTS = """
    import sys, json
    import numpy as np
    from PIL import Image
    from edgeseg.runtime.fileio import atomic_write_bytes
    from edgeseg.runtime.visualize import save_png
    v = int(sys.argv[2])
    save_png(Image.fromarray(np.full((64, 64, 3), v, np.uint8)), sys.argv[1] + "/overlay.png")
    atomic_write_bytes(sys.argv[1] + "/result.json", json.dumps({"v": v, "pad": "x" * 4000}).encode())
"""


@pytest.mark.parametrize("fault", ["write:1", "rename:1", "write:2", "rename:2"])
def test_a_killed_overlay_or_json_write_keeps_the_previous_file(tmp_path, fault):
    from PIL import Image

    assert run(OUTPUTS, str(tmp_path), "10") == 0
    assert run(OUTPUTS, str(tmp_path), "20", fault=fault) == 137
    png = np.asarray(Image.open(tmp_path / "overlay.png"))
    doc = json.loads((tmp_path / "result.json").read_text())
    assert int(png[0, 0, 0]) in (10, 20) and doc["v"] in (10, 20)
    assert run(OUTPUTS, str(tmp_path), "30") == 0
    assert leftovers(tmp_path) == [] and json.loads((tmp_path / "result.json").read_text())["v"] == 30
