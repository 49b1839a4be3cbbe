"""Imports that work everywhere: from the repository root and from any other folder, ``import
edgeseg.runtime``, ``python -m edgeseg.cli`` and ``python -m pytest`` find the package (no root folder is
named like it), and an editable install resolves edgeseg.* to the files under src/edgeseg (which static tools
read through the install's .pth or ``[tool.pyright] extraPaths``). The plain (non-editable) install is checked
the same way by ``make runtime-only``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import edgeseg, edgeseg.runtime, edgeseg.cli, edgeseg.methods; from pathlib import Path; "
         "print(Path(edgeseg.runtime.__file__).parent.name, Path(edgeseg.__file__).parent)")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_the_package_imports_from_any_folder(where, tmp_path):
    out = run(["-c", PROBE], ROOT if where == "root" else tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "runtime"


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_python_dash_m_cli_runs_from_any_folder(where, tmp_path):
    out = run(["-m", "edgeseg.cli", "eval", "--help"], ROOT if where == "root" else tmp_path)
    assert out.returncode == 0, out.stderr
    assert "refdiff" in out.stdout


def test_python_dash_m_pytest_collects_from_the_root():
    out = run(["-m", "pytest", "--collect-only", "-q", "tests/runtime/test_metrics.py"], ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_metrics.py::" in out.stdout


def test_no_root_folder_shadows_the_package():
    assert not (ROOT / "edgeseg").exists()
    for layer in ("train", "export", "runtime"):
        link = ROOT / "src" / "edgeseg" / layer
        assert link.is_symlink() and link.resolve() == ROOT / layer


def test_an_editable_install_maps_edgeseg_to_src():
    import edgeseg

    where = Path(edgeseg.__file__).resolve().parent
    if where != ROOT / "src" / "edgeseg":
        pytest.skip(f"edgeseg is installed from {where} (a plain install), not this checkout's src/")
    import edgeseg.runtime.bundle as b

    assert Path(b.__file__).resolve() == ROOT / "runtime" / "bundle.py"
