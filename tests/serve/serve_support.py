"""Helpers shared by the serving tests (imported by name: tests/serve is on sys.path for its test files)."""

from __future__ import annotations

import importlib.util
import socket

import pytest

MISSING = [m for m in ("pytriton", "tritonclient") if importlib.util.find_spec(m) is None]
needs_triton = pytest.mark.skipif(bool(MISSING), reason=f"{MISSING} not installed (pip install 'edgeseg[serve]')")

LABELS = ["circle", "square", "triangle", "star", "hexagon", "heart", "grass", "sand", "water", "sky"]
EXPRESSIONS = ["the red circle", "the star on the left"]


def free_ports(n: int = 3) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
