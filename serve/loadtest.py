"""Load test of ``edgeseg serve`` on loopback: N concurrent clients x M requests, with and without Triton's
dynamic batching, 1 or 2 model instances; every answer compared with the in-process runtime's.

    doc = load_test("engines/lseg_toy", images, labels, clients=(1, 4, 16), requests=25)
    write_results(doc, "benchmarks/results/serve-load-cpu.json")      # + .md

Baseline: one in-process predictor called serially (``predict(labels, state=encode(image))``) on the same
requests. Per scenario: p50 / p99 latency per request (client side), throughput (requests / wall time), mean
Triton batch size (``nv_inference_count`` / ``nv_inference_exec_count`` from the metrics endpoint), wrong
answers (label map not equal to the runtime's) and lost ones (errors, timeouts). The clients run in this
process (threads, one connection each) on the same CPU as the server. Bounded: every scenario sends
``clients x requests`` requests, each with a timeout, and the whole run stops after ``time_limit_s``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .app import default_threads, serving
from .client import metric, segment
from .config import Batching
from .repository import ModelOptions
from .server import Ports, group_pids


def _free_ports() -> Ports:
    import socket

    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return Ports(*(s.getsockname()[1] for s in socks))
    finally:
        for s in socks:
            s.close()


def _stats(lat_s: list[float], wall_s: float, n: int) -> dict[str, float]:
    ms = np.asarray(lat_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "throughput_rps": round(n / wall_s, 1) if wall_s > 0 else None, "wall_s": round(wall_s, 2)}


class Serial:
    """The baseline: one in-process predictor, called serially on request i = image i % len(images)."""

    def __init__(self, bundle: str, images: Sequence[np.ndarray], labels: list[str], warmup: int = 5):
        from edgeseg.runtime import load_predictor

        self.pred, self.images, self.labels = load_predictor(bundle, cache_dir=None), images, labels
        for i in range(warmup):
            self._one(i)
        self.ref = [self.pred.predict(labels, state=self.pred.encode(im)).label_map for im in images]

    def _one(self, i: int) -> None:
        self.pred.predict(self.labels, state=self.pred.encode(self.images[i % len(self.images)]))

    def run(self, n: int) -> dict:
        lat = []
        cpu0, t0 = _own_cpu_s(), time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            self._one(i)
            lat.append(time.perf_counter() - t)
        return dict(_stats(lat, time.perf_counter() - t0, n), requests=n,
                    cpu_ms_per_request=round((_own_cpu_s() - cpu0) * 1e3 / max(1, n), 2))


def _own_cpu_s() -> float:
    """CPU seconds (user + system) of this process so far: the clients' threads, or the serial predictor."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds of the live processes of a process group (the server and its backend stubs)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return total


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _clients(server: Any, model: str, images: Sequence[np.ndarray], labels: list[str], ref: list[np.ndarray],
             clients: int, requests: int, deadline: float) -> dict:
    import tritonclient.http as httpclient

    lat: list[float] = []
    wrong, lost, lock = [0], [0], threading.Lock()
    start = threading.Barrier(clients + 1)

    def run(c: int) -> None:
        conn = httpclient.InferenceServerClient(server.http_url, network_timeout=60, connection_timeout=30)
        try:
            start.wait()
            for r in range(requests):
                if time.monotonic() > deadline:
                    with lock:
                        lost[0] += requests - r
                    return
                i = (c * requests + r) % len(images)
                t = time.perf_counter()
                try:
                    out = segment(conn, model, images[i], labels)
                    ok = np.array_equal(out["label_map"], ref[i])
                except Exception:  # noqa: BLE001 - a lost response, counted
                    with lock:
                        lost[0] += 1
                    continue
                with lock:
                    lat.append(time.perf_counter() - t)
                    wrong[0] += not ok
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    before = _metrics(server.metrics_url)
    cpu0 = (_own_cpu_s(), _group_cpu_s(server.proc.pid))
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 60))
    wall = time.perf_counter() - t0
    cpu = (_own_cpu_s() - cpu0[0], _group_cpu_s(server.proc.pid) - cpu0[1])
    after = _metrics(server.metrics_url)
    inferences = metric(after, "nv_inference_count", model) - metric(before, "nv_inference_count", model)
    executions = metric(after, "nv_inference_exec_count", model) - metric(before, "nv_inference_exec_count", model)
    return dict(_stats(lat, wall, len(lat)), clients=clients, requests=clients * requests, answered=len(lat),
                wrong=wrong[0], lost=lost[0], mean_batch=round(inferences / executions, 2) if executions else None,
                cpu_ms_per_request={"server": round(cpu[1] * 1e3 / max(1, len(lat)), 2),
                                    "clients": round(cpu[0] * 1e3 / max(1, len(lat)), 2)})


def load_test(bundle: str, images: Sequence[np.ndarray], labels: list[str], clients: Sequence[int] = (1, 4, 16),
              requests: int = 25, instances: Sequence[int] = (1, 2), batching: Sequence[bool] = (True, False),
              max_batch: int = 8, delay_us: int = 2000, time_limit_s: float = 900.0, repeats: int = 3,
              command: str = "") -> dict:
    """Every (instances, dynamic batching) server x every client count, ``repeats`` times; each served run is
    paired with a serial in-process run of as many requests just before it (the machine's load drifts: the
    ratio of the pair is the figure). A row holds the medians over its repeats."""
    deadline = time.monotonic() + time_limit_s
    serial = Serial(bundle, images, labels)
    rows = []
    for inst in instances:
        for dyn in batching:
            b = Batching(max_batch, delay_us if dyn else None)
            options = ModelOptions(threads=default_threads(inst), cache_dir="none")
            with serving([bundle], ["model"], _free_ports(), instances=inst, batching=b, options=options,
                         exit_timeout_s=2) as (server, _):
                _clients(server, "model", images, labels, serial.ref, 2, 3, deadline)  # warm-up
                for c in clients:
                    runs = []
                    for _ in range(repeats):
                        base = serial.run(c * requests)
                        row = _clients(server, "model", images, labels, serial.ref, c, requests, deadline)
                        runs.append((row, base))
                    rows.append(_median_row(runs, inst, dyn, options.threads))
    top = max(clients)
    best = max((r for r in rows if r["clients"] == top), key=lambda r: r["speedup"])
    head = {"clients": top, "instances": best["instances"], "dynamic_batching": best["dynamic_batching"],
            "served_rps": best["throughput_rps"], "in_process_serial_rps": best["serial_rps"],
            "speedup": best["speedup"], "goal": 1.5, "wrong": sum(r["wrong"] for r in rows),
            "lost": sum(r["lost"] for r in rows), "requests": sum(r["requests"] for r in rows)}
    return {"name": "serve-load", "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_at_end": _loadavg()},
            "versions": {p: _version(p) for p in ("nvidia-pytriton", "tritonclient", "onnxruntime", "numpy")},
            "bundle": bundle, "labels": labels, "images": len(images),
            "settings": {"requests_per_client": requests, "repeats": repeats, "max_batch": max_batch,
                         "max_queue_delay_us": delay_us,
                         "protocol": "http (tritonclient, one connection per client thread, in this process)"},
            "rows": rows, "headline": head}


def _median_row(runs: list[tuple[dict, dict]], inst: int, dyn: bool, threads: int | None) -> dict:
    """Medians over the repeats of one scenario; wrong / lost summed; every repeat's pair kept."""
    med = lambda key, rs: round(float(np.median([r[key] for r in rs if r[key] is not None])), 2)  # noqa: E731
    served, base = [r for r, _ in runs], [b for _, b in runs]
    ratios = [r["throughput_rps"] / b["throughput_rps"] for r, b in runs if r["throughput_rps"]]
    return {"instances": inst, "dynamic_batching": dyn, "threads_per_instance": threads,
            "clients": served[0]["clients"], "requests": sum(r["requests"] for r in served),
            "p50_ms": med("p50_ms", served), "p99_ms": med("p99_ms", served),
            "throughput_rps": med("throughput_rps", served), "serial_rps": med("throughput_rps", base),
            "serial_p50_ms": med("p50_ms", base), "speedup": round(float(np.median(ratios)), 2) if ratios else 0.0,
            "mean_batch": med("mean_batch", served),
            "cpu_ms_per_request": {"serial": med("cpu_ms_per_request", base),
                                   **{k: round(float(np.median([r["cpu_ms_per_request"][k] for r in served])), 2)
                                      for k in ("server", "clients")}},
            "wrong": sum(r["wrong"] for r in served),
            "lost": sum(r["lost"] for r in served), "repeats": [{"served": r, "serial": b} for r, b in runs]}


def _loadavg() -> str:
    """The 1 / 5 / 15 minute load averages (other jobs on the machine skew every figure)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def markdown(doc: dict) -> str:
    h = doc["headline"]
    lines = [f"# {doc['name']}: {doc['bundle']}", "", f"`{doc['command']}`", "",
             f"Machine: {doc['machine']['platform']}, {doc['machine']['cpus']} CPUs (shared: load average at the "
             f"end {doc['machine']['loadavg_at_end']}); versions {doc['versions']}.", "",
             f"**Headline**: {h['clients']} clients, {h['instances']} instance(s), dynamic batching "
             f"{'on' if h['dynamic_batching'] else 'off'}: {h['served_rps']} req/s vs {h['in_process_serial_rps']} "
             f"req/s for one in-process predictor called serially just before = **{h['speedup']}x** (median of "
             f"{doc['settings']['repeats']} pairs; goal >= {h['goal']}x: "
             f"{'met' if h['speedup'] >= h['goal'] else 'missed'}). Wrong answers {h['wrong']}, lost {h['lost']} "
             f"of {h['requests']} requests.", "",
             "CPU ms / request: serial = the in-process predictor's; served = server processes + client threads.", "",
             "| instances | dynamic batching | clients | requests | p50 ms | p99 ms | req/s | serial req/s | x serial "
             "| mean batch | CPU ms/req serial | served (server + clients) | wrong | lost |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        cpu = r["cpu_ms_per_request"]
        lines.append(f"| {r['instances']} | {'on' if r['dynamic_batching'] else 'off'} | {r['clients']} | "
                     f"{r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {r['serial_rps']} | "
                     f"{r['speedup']} | {r['mean_batch']} | {cpu['serial']} | {cpu['server']} + {cpu['clients']} | "
                     f"{r['wrong']} | {r['lost']} |")
    return "\n".join(lines) + "\n"


def write_results(doc: dict, out: str | Path) -> list[Path]:
    from edgeseg.runtime.fileio import atomic_write_bytes

    out = Path(out)
    md = out.with_suffix(".md")
    atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(md, markdown(doc).encode())
    return [out, md]
