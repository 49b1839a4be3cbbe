"""Does an FP16 graph take half the memory in ONNX Runtime's CPU provider? A study of the session options.

    python benchmarks/ort_fp16_cpu_memory.py --out benchmarks/results/ort-fp16-cpu-memory.json

The graph: a chain of ``--layers`` MatMuls with ``--dim`` x ``--dim`` float16 weights (the shape of a UNet /
ViT linear layer, weights only, float32 in and out through Casts), saved once. Each option set runs in its own
process; per run: RSS after the session opened, RSS after two runs, peak RSS, load and run seconds. The
option sets: ONNX Runtime's defaults; constant folding disabled (``disabled_optimizers=["ConstantFolding"]``,
which keeps the Casts the CPU provider inserts around float16 nodes it has no kernel for from being folded
into float32 initializers); MatMul prepacking off; the CPU arena off; every graph optimization off; and
combinations. Written to answer issue 15's "FP16 bundle <= 1.5 x its weight bytes" on a CPU: the result says
where the float32 copy comes from and whether an option removes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

OPTION_SETS = ("default", "nofold", "noprepack", "noarena", "nofold+noprepack", "nofold+noprepack+noarena",
               "noopt", "noopt+noarena")


def make_graph(path: Path, layers: int, dim: int) -> int:
    """Write the float16 MatMul chain; returns its weight bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["x"], ["h_in"], to=TensorProto.FLOAT16)]
    inits, prev = [], "h_in"
    for i in range(layers):
        w = (rng.standard_normal((dim, dim), dtype=np.float32) * dim ** -0.5).astype(np.float16)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Cast", [prev], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "fp16_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, dim])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return layers * dim * dim * 2


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's RSS (``VmRSS``) or its peak (``VmHWM``: per address space, unlike ``ru_maxrss``, which a
    child started by ``subprocess`` inherits from its parent) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: str, option_set: str) -> dict:
    """One option set, in this process (run by :func:`main` in a child)."""
    import numpy as np
    import onnxruntime as ort

    opts, kw, flags = ort.SessionOptions(), {}, set(option_set.split("+"))
    if "nofold" in flags:
        kw["disabled_optimizers"] = ["ConstantFolding"]
    if "noprepack" in flags:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if "noarena" in flags:
        opts.enable_cpu_mem_arena, opts.enable_mem_pattern = False, False
    if "noopt" in flags:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"], **kw)
    load_s, load_rss = time.perf_counter() - t, _rss_mb()
    x = np.random.default_rng(1).standard_normal((64, int(sess.get_inputs()[0].shape[1])), dtype=np.float32)
    sess.run(None, {"x": x})
    t = time.perf_counter()
    sess.run(None, {"x": x})
    return {"options": option_set, "rss_after_load_MB": round(load_rss), "rss_after_runs_MB": round(_rss_mb()),
            "peak_rss_MB": round(_rss_mb("VmHWM")),
            "load_s": round(load_s, 2), "run_s": round(time.perf_counter() - t, 3), "ort": ort.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=60)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--work", default="/tmp/edgeseg-fp16-memory.onnx", help="where the graph is written")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--child", nargs=2, metavar=("GRAPH", "OPTIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("@@" + json.dumps(measure(*args.child)))
        return 0
    graph = Path(args.work)
    weight_mb = make_graph(graph, args.layers, args.dim) / 2**20
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    rows = []
    for option_set in OPTION_SETS:
        out = subprocess.run([sys.executable, __file__, "--child", str(graph), option_set], capture_output=True,
                             text=True, check=True).stdout
        row = json.loads(next(x for x in out.splitlines() if x.startswith("@@"))[2:])
        row["peak_over_fp16_weights"] = round(row["peak_rss_MB"] / weight_mb, 2)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {"graph": f"{args.layers} x MatMul {args.dim}x{args.dim} float16", "fp16_weights_MB": round(weight_mb),
              "fp32_weights_MB": round(2 * weight_mb), "cpu": platform.processor() or platform.machine(),
              "avx512fp16": "avx512_fp16" in flags, "rows": rows}
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
