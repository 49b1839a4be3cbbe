"""Load test of ``edgeseg serve`` (issue 17) on ToyWorld scenes, loopback only, bounded in count and time.

    python benchmarks/serve_load.py [BUNDLE] [--clients 1 4 16] [--requests 25] [--instances 1 2]
                                    [--out benchmarks/results/serve-load-cpu.json]

Writes the JSON and a markdown table (edgeseg.serve.loadtest): per (instances, dynamic batching, clients) p50 /
p99 latency, throughput, mean Triton batch, wrong / lost answers; the headline is the best 16-client throughput
over one in-process predictor called serially. Run nothing else meanwhile: the clients share the CPU with the
server.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from edgeseg.serve.loadtest import load_test, markdown, write_results
    from edgeseg.train.data.toyworld import CLASSES, ToyWorld

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", default="engines/lseg_toy")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=25, help="requests per client and scenario")
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3, help="pairs (serial baseline, served run) per scenario")
    p.add_argument("--images", type=int, default=32, help="distinct ToyWorld scenes (generalized split, seed 7)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds; later requests count as lost")
    p.add_argument("--out", default="benchmarks/results/serve-load-cpu.json")
    a = p.parse_args(argv)
    world = ToyWorld("all", 7)
    images = [world[i].image for i in range(a.images)]
    doc = load_test(a.bundle, images, list(CLASSES), a.clients, a.requests, a.instances, (True, False), a.max_batch,
                    a.max_queue_delay_us, a.time_limit, a.repeats, "python " + " ".join(sys.argv))
    print(markdown(doc))
    print("wrote " + ", ".join(str(x) for x in write_results(doc, a.out)))


if __name__ == "__main__":
    main()
