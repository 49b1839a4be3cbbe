"""Run Triton Inference Server from the PyPI ``nvidia-pytriton`` distribution (its ``tritonserver`` binary and
Python backend) on a model repository, and stop it with nothing left behind.

    with TritonServer(repository, Ports(8000, 8001, 8002)) as server:    # waits until every model is ready
        server.http_url                                                  # "127.0.0.1:8000"
    # stopped: SIGINT, in-flight requests finished (up to exit_timeout_s), then the whole process group is gone

The server runs in its own session (process group): its Python-backend stubs (one process per model instance)
are in that group, and :meth:`TritonServer.stop` waits until no process of the group is left (SIGKILL after
the grace period). ``PR_SET_PDEATHSIG`` ends the server if the process that started it dies.

Environment of the server: ``LD_LIBRARY_PATH`` = this interpreter's ``lib/`` (so the backend stub loads *its*
libpython, not an older system one: the pyenv quirk) + the distribution's libraries; ``PATH`` starts with this
interpreter's ``bin/`` (the stub takes its ``sys.prefix``, hence the venv's packages, from there).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

INSTALL = "pip install 'edgeseg[serve]'"
MIN_GLIBC = (2, 35)
ARCHES = ("x86_64", "aarch64", "arm64")


class ServeError(RuntimeError):
    """The server cannot start or run here: one line naming the problem and the fix."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def check_platform() -> None:
    """Linux, x86_64 or arm64, glibc >= 2.35 (what the nvidia-pytriton wheels are built for)."""
    machine = platform.machine()
    if sys.platform != "linux" or machine not in ARCHES:
        raise ServeError(f"edgeseg serve needs Linux on x86_64 or arm64 (the nvidia-pytriton wheels); this is "
                         f"{sys.platform} {machine}: run it in a Linux container, or use the model repository "
                         f"(edgeseg triton-repo) with the Triton container")
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
    parts = libc.split()[-1].split(".") if libc and libc.startswith("glibc") else []
    version = tuple(int(x) for x in parts[:2] if x.isdigit())
    if len(version) < 2 or version < MIN_GLIBC:
        raise ServeError(f"edgeseg serve needs glibc >= {'.'.join(map(str, MIN_GLIBC))} (Ubuntu 22.04, Debian 12 or "
                         f"newer); this system has {libc or 'no glibc (musl?)'}: use a newer base image")


def distribution() -> tuple[Path, Path]:
    """(the tritonserver folder of nvidia-pytriton, its bundled libraries folder)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"nvidia-pytriton (Triton Inference Server) is not installed; edgeseg serve needs it: "
                          f"{INSTALL}")
    root = Path(list(spec.submodule_search_locations)[0])
    server, libs = root / "tritonserver", root.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise ServeError(f"{server}/bin/tritonserver is missing: reinstall nvidia-pytriton ({INSTALL})")
    return server, libs if libs.is_dir() else server / "external_libs"


def stub_path(server: Path) -> Path:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (server / "python_backend_stubs").iterdir()) if (
            server / "python_backend_stubs").is_dir() else []
        raise ServeError(f"nvidia-pytriton has no Python backend stub for Python {version} (it has {have}): run "
                         f"edgeseg serve with one of those Python versions")
    return stub


def python_lib_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, or None (a statically linked Python)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and name and (Path(libdir) / name).is_file():
        return str(libdir)
    return None


def server_env(libs: Path) -> dict[str, str]:
    env = dict(os.environ)
    front = [p for p in (python_lib_dir(), str(libs)) if p]
    env["LD_LIBRARY_PATH"] = ":".join(front + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PATH"] = ":".join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    return env


def backend_dir(server: Path, dest: Path) -> Path:
    """backends/python with the stub of this Python version (as PyTriton lays it out)."""
    py = dest / "python"
    py.mkdir(parents=True)
    for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(server / "backends" / "python" / f, py / f)
    shutil.copy2(stub_path(server), py / "triton_python_backend_stub")
    return dest


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


class TritonServer:
    """One tritonserver process on ``repository``, bound to ``host`` (loopback by default)."""

    def __init__(self, repository: str | Path, ports: Ports = Ports(), host: str = "127.0.0.1",
                 exit_timeout_s: int = 10, log_verbose: int = 0, workdir: str | Path | None = None):
        self.repository, self.ports, self.host = Path(repository), ports, host
        self.exit_timeout_s, self.log_verbose = exit_timeout_s, log_verbose
        self._workdir_arg = workdir
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "tritonserver.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.workdir and self.log_path.is_file() else ""

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        check_platform()
        server, libs = distribution()
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeseg-serve-", dir=self._workdir_arg))
        backends = backend_dir(server, self.workdir / "backends")
        args = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={backends}", f"--http-address={self.host}", f"--grpc-address={self.host}",
                f"--metrics-address={self.host}", f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}", "--allow-metrics=true", "--allow-gpu-metrics=false",
                "--exit-on-error=true", "--strict-readiness=true", f"--exit-timeout-secs={self.exit_timeout_s}",
                f"--log-verbose={self.log_verbose}",
                f"--backend-config=python,shm-region-prefix-name=edgeseg{os.getpid()}_{self.workdir.name[-8:]}_"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env=server_env(libs), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def ready(self) -> bool:
        """The server answers /v2/health/ready with 200 (every model loaded, strict readiness)."""
        return self.proc is not None and self.proc.poll() is None and self._get("/v2/health/ready") == 200

    def _metrics_up(self) -> bool:
        """The metrics service starts a little after HTTP / gRPC: ready means it answers too."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def live(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._get("/v2/health/live") == 200

    def _wait_ready(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ServeError(self.failure(f"tritonserver exited with status {self.proc.returncode}"))
            if self.ready() and self._metrics_up():
                return
            time.sleep(0.1)
        raise ServeError(self.failure(f"tritonserver was not ready after {timeout_s:.0f} s"))

    def failure(self, what: str) -> str:
        """One line: the first edgeseg error of the log, else Triton's own error, with the log's path."""
        text = self.log()
        for line in text.splitlines():
            if "EDGESEG-SERVE-ERROR: " in line:  # Triton logs the Python error and its traceback with "\n"s
                msg = line.split("EDGESEG-SERVE-ERROR: ", 1)[1].split("\\n", 1)[0]
                return msg.strip().strip('"').replace("\\'", "'")
        errors = [ln for ln in text.splitlines() if ln.startswith("E") or "error" in ln.lower()]
        if any("Address already in use" in ln or "failed to start" in ln for ln in errors):
            return (f"a port is in use ({self.ports.http}/{self.ports.grpc}/{self.ports.metrics}): pick free ones with "
                    f"--http-port/--grpc-port/--metrics-port")
        if "_recursion_count" in text or "libpython" in text:
            return ("Triton's Python backend stub loaded another libpython than this Python's: set LD_LIBRARY_PATH to "
                    f"{sysconfig.get_config_var('LIBDIR')} (or use a Python built with --enable-shared)")
        last = errors[-1].strip() if errors else "no error line"
        return f"{what}: {last[:300]} (log: {self.log_path})"

    def stop(self) -> None:
        """SIGINT, wait for Triton's own shutdown (exit_timeout_s + 15 s), then SIGKILL what is left of the
        process group; remove the work folder. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid
            if proc.poll() is None:
                os.killpg(pgid, signal.SIGINT)
                try:
                    proc.wait(self.exit_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    pass
            end = time.monotonic() + 10
            while group_pids(pgid) and time.monotonic() < end:
                time.sleep(0.1)
            if group_pids(pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        if self.workdir is not None and self.workdir.exists():
            keep = os.environ.get("EDGESEG_SERVE_KEEP_LOGS")
            if not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()
