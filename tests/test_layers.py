"""The layers point one way, checked on the whole import graph of the source tree (every ``import``, at module
level or inside a function) and by importing the torch-free layers in a process where torch cannot be imported.

- train never imports export (nor the CLI);
- runtime never reaches torch & co., train or export, directly or through what it imports;
- the torch-free half of export (``edgeseg.export.build``: build, precision, quantize, lint, TensorRT engines)
  never reaches torch & co.;
- the CLI and the evaluations import no torch when they are imported (their torch paths are lazy);
- serving (``edgeseg.serve``: edgeseg serve, the Triton model repository) never reaches torch & co., train or
  export, directly or through what it imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"edgeseg.train": ROOT / "train", "edgeseg.export": ROOT / "export", "edgeseg.runtime": ROOT / "runtime",
          "edgeseg.serve": ROOT / "serve"}
TORCH_FAMILY = ("torch", "torchvision", "open_clip", "safetensors", "diffusers", "transformers", "segment_anything",
                "onnxscript", "polygraphy")


def source_modules(layers: dict[str, Path], package_root: Path | None = None) -> dict[str, Path]:
    """module name -> file, for every .py under each layer folder (and the package root's own files)."""
    mods: dict[str, Path] = {}
    for prefix, folder in layers.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = f
    if package_root is not None:
        for f in sorted(package_root.glob("*.py")):
            mods["edgeseg" if f.stem == "__init__" else f"edgeseg.{f.stem}"] = f
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, lazy) for each import in the file; lazy: inside a function. ``from pkg import sub``
    names the submodule when ``pkg.sub`` is a known module; parents of an edgeseg module count too."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append((mod, inner))
                found.extend((f"{mod}.{a.name}", inner) for a in child.names if f"{mod}.{a.name}" in known)
            visit(child, inner)

    visit(tree, False)
    out = []
    for mod, lazy in found:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = mod.split(".")
        out += [(".".join(parts[:i]), lazy) for i in range(2, len(parts)) if ".".join(parts[:i]) in known]
        out.append((mod, lazy))
    return out


def reach(graph: dict[str, list[tuple[str, bool]]], start: str, lazy_too: bool = True) -> dict[str, list[str]]:
    """Every module reachable from ``start`` -> one import chain leading to it."""
    chains, todo = {start: [start]}, [start]
    while todo:
        cur = todo.pop()
        for mod, lazy in graph.get(cur, []):
            if (lazy and not lazy_too) or mod in chains:
                continue
            chains[mod] = chains[cur] + [mod]
            if mod in graph:
                todo.append(mod)
    return chains


def violations(mods: dict[str, Path]) -> list[str]:
    """Every broken layer rule in the tree, as 'rule: chain'."""
    known = set(mods)
    graph = {m: imports_of(m, f, known) for m, f in mods.items()}
    bad = []

    def forbidden(mod: str, prefixes: tuple[str, ...]) -> bool:
        return any(mod == p or mod.startswith(p + ".") for p in prefixes)

    for m in sorted(mods):
        if m.startswith("edgeseg.train"):
            bad += [f"train imports export/cli: {m} -> {i}" for i, _ in graph[m]
                    if forbidden(i, ("edgeseg.export", "edgeseg.cli"))]
        rules = []
        if m.startswith("edgeseg.runtime"):
            rules.append(("runtime reaches torch, train or export", True,
                          TORCH_FAMILY + ("edgeseg.train", "edgeseg.export", "edgeseg.cli")))
        if m.startswith("edgeseg.serve"):
            rules.append(("serve reaches torch, train or export", True,
                          TORCH_FAMILY + ("edgeseg.train", "edgeseg.export", "edgeseg.cli")))
        if m.startswith("edgeseg.export.build"):
            rules.append(("torch-free build reaches torch", True, TORCH_FAMILY))
        if m.startswith("edgeseg.export.evaluation") or m in ("edgeseg", "edgeseg.cli", "edgeseg.methods"):
            rules.append(("imports torch at import time", False, TORCH_FAMILY))
        for rule, lazy_too, prefixes in rules:
            for mod, chain in reach(graph, m, lazy_too).items():
                if forbidden(mod, prefixes):
                    bad.append(f"{rule}: {' -> '.join(chain)}")
    return sorted(set(bad))


def test_the_source_tree_keeps_its_layers():
    mods = source_modules(LAYERS, ROOT / "src" / "edgeseg")
    assert len(mods) > 80 and "edgeseg.export.build.quantize" in mods and "edgeseg.cli" in mods
    assert violations(mods) == []


def test_the_checker_finds_a_leak_through_another_module(tmp_path):
    """A runtime module importing (inside a function) a helper that imports torch, and train importing export,
    are both reported with their chains."""
    (tmp_path / "runtime").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "export" / "build").mkdir(parents=True)
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (tmp_path / "runtime" / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "runtime" / "b.py").write_text("import numpy\nimport torch.nn\n")
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "train" / "t.py").write_text("from edgeseg.export.build import lint\n")
    (tmp_path / "export" / "__init__.py").write_text("")
    (tmp_path / "export" / "build" / "__init__.py").write_text("")
    (tmp_path / "export" / "build" / "lint.py").write_text("from edgeseg.runtime import a\n")
    mods = source_modules({p: tmp_path / p.split(".")[1] for p in LAYERS})
    found = violations(mods)
    assert "runtime reaches torch, train or export: edgeseg.runtime.a -> edgeseg.runtime.b -> torch.nn" in found
    assert "train imports export/cli: edgeseg.train.t -> edgeseg.export" in found
    assert ("torch-free build reaches torch: edgeseg.export.build.lint -> edgeseg.runtime.a -> edgeseg.runtime.b "
            "-> torch.nn") in found


BLOCKED_IMPORTS = textwrap.dedent("""
    import sys, json, importlib, importlib.abc, pkgutil
    BLOCKED = tuple(json.loads(sys.argv[1]))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked import of {name}")
    sys.meta_path.insert(0, Block())
    done = []
    for pkg in json.loads(sys.argv[2]):
        mod = importlib.import_module(pkg)
        done.append(pkg)
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), pkg + "."):
            importlib.import_module(info.name)
            done.append(info.name)
    print(json.dumps({"imported": done, "torch": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
""")


@pytest.mark.parametrize("packages, blocked", [
    (["edgeseg.runtime"], TORCH_FAMILY + ("edgeseg.train", "edgeseg.export")),
    (["edgeseg.export.build"], TORCH_FAMILY),
    (["edgeseg.export.evaluation", "edgeseg.cli"], TORCH_FAMILY),
    (["edgeseg.serve"], TORCH_FAMILY + ("edgeseg.train", "edgeseg.export")),
], ids=["runtime", "export.build", "evaluation+cli", "serve"])
def test_torch_free_layers_import_with_torch_blocked(packages, blocked):
    out = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS, json.dumps(blocked), json.dumps(packages)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["torch"] == [] and len(res["imported"]) >= len(packages) + 1
