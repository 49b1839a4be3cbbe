"""Starting and stopping: the ``edgeseg serve`` command on free loopback ports, SIGINT -> exit 0 with no process
left (server and backend stubs); one-line errors for what cannot start (port in use, libpython mismatch,
unsupported platform, missing extra, a bundle that cannot be served); the server's environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from serve_support import free_ports, needs_triton

from edgeseg.errors import user_message


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError):
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@needs_triton
def test_the_cli_serves_until_sigint_and_leaves_no_process(lseg_bundle, tmp_path):
    from edgeseg.serve.server import group_pids

    http, grpc, metrics = free_ports()
    cmd = [sys.executable, "-m", "edgeseg.cli", "serve", str(lseg_bundle), "--name", "seg", "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--cache-dir", str(tmp_path / "cache"),
           "--exit-timeout", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert "Triton ready" in banner, banner + proc.stdout.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/seg/ready", timeout=10) as r:
            assert r.status == 200
        servers = _children(proc.pid)
        assert len(servers) == 1
        tree = set(group_pids(servers[0]))  # tritonserver and its Python-backend stub(s)
        assert len(tree) >= 2
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopped" in out
    time.sleep(0.2)
    assert [p for p in tree if _alive(p)] == []


@needs_triton
def test_a_port_in_use_is_a_one_line_error(lseg_bundle, tmp_path):
    import socket

    from edgeseg.serve import ModelOptions, Ports, ServeError, serving

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    http, grpc, metrics = free_ports()
    try:
        with pytest.raises(ServeError) as e:
            with serving([lseg_bundle], ports=Ports(busy.getsockname()[1], grpc, metrics),
                         options=ModelOptions(cache_dir="none"), exit_timeout_s=1, workdir=tmp_path):
                pass
    finally:
        busy.close()
    msg = user_message(e.value)
    assert msg is not None and "port" in msg and "--http-port" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # the work folder is removed


@needs_triton
def test_a_stub_with_another_libpython_is_named_with_the_fix(lseg_bundle, tmp_path, monkeypatch):
    """The pyenv quirk, simulated: the model's shim expects another Python version than the stub runs."""
    import edgeseg.serve.repository as repository
    from edgeseg.serve import ModelOptions, Ports, ServeError, serving

    real = repository.local_shim
    monkeypatch.setattr(repository, "local_shim", lambda expected=None, path=None: real((3, 0, 1), path))
    with pytest.raises(ServeError) as e:
        with serving([lseg_bundle], ports=Ports(*free_ports()), options=ModelOptions(cache_dir="none"),
                     exit_timeout_s=1):
            pass
    msg = user_message(e.value)
    assert msg is not None and "LD_LIBRARY_PATH" in msg and "3.0.1" in msg and "\n" not in msg


def test_the_server_environment_names_this_pythons_libpython():
    from edgeseg.serve.server import python_lib_dir, server_env

    env = server_env(Path("/opt/triton-libs"))
    parts = env["LD_LIBRARY_PATH"].split(":")
    lib = python_lib_dir()
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert lib is not None and parts[0] == lib and parts[1] == "/opt/triton-libs"
    else:
        assert parts[0] == "/opt/triton-libs"
    assert env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")


def test_an_unsupported_platform_is_refused_in_one_line(monkeypatch):
    import platform

    from edgeseg.serve.server import ServeError, check_platform

    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    with pytest.raises(ServeError, match="Linux on x86_64 or arm64"):
        check_platform()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.31")
    with pytest.raises(ServeError, match=r"glibc >= 2\.35.*glibc 2\.31"):
        check_platform()


def test_a_missing_serve_extra_names_the_install(monkeypatch):
    import importlib.util

    from edgeseg.serve.server import distribution

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(ImportError) as e:
        distribution()
    assert "pip install 'edgeseg[serve]'" in user_message(e.value)


def test_bundles_that_cannot_be_served_are_refused(tmp_path, lseg_bundle):
    from edgeseg.serve.repository import resolve_bundles

    with pytest.raises(FileNotFoundError):
        resolve_bundles([tmp_path / "nope"])
    with pytest.raises(ValueError, match="two bundles would be served as"):
        resolve_bundles([lseg_bundle, lseg_bundle])
    with pytest.raises(ValueError, match="model name"):
        resolve_bundles([lseg_bundle], ["bad/name"])
    import json
    import shutil

    clip = tmp_path / "clip_like"
    shutil.copytree(lseg_bundle, clip)
    m = json.loads((clip / "manifest.json").read_text())
    m["method"] = "clip"
    (clip / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="does not serve") as e:
        resolve_bundles([clip])
    assert user_message(e.value) is not None
