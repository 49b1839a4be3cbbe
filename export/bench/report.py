"""Markdown tables and PNG plots of benchmark documents (see :mod:`edgeseg.export.bench.results` for the format)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.runtime.fileio import atomic_write_bytes


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _fidelity(f: dict) -> str:
    short = {"cosine_vs_torch_fp32": "cosine", "label_map_agreement": "label agreement"}
    return ", ".join(f"{short.get(k, k)} {v:.5f}" for k, v in f.items() if v is not None) or "-"


def markdown(doc: dict) -> str:
    """One table row per result row: latency percentiles, throughput, memory, GFLOPs, peak fraction,
    fidelity; then the stage breakdown where rows have stages; then the within-run ratios."""
    from edgeseg.export.bench.results import ratios_within

    m = doc.get("machine", {})
    gpu = (m.get("gpu") or {}).get("name", "none")
    lines = [f"# edgeseg bench {doc['benchmark']}", "",
             f"`{doc.get('command', '')}` - {doc.get('created', '')} - CPU: {m.get('cpu')} x{m.get('cores')}, "
             f"GPU: {gpu}", "",
             "| name | backend | batch | p50 ms | p90 ms | p99 ms | mean ms (95% CI) | items/s | peak RSS MB | "
             "GFLOP | % of peak | fidelity vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['name']} | {r['backend']} | {r['batch']} | skipped: {r['skipped']} "
                         f"| | | | | | | | |")
            continue
        lat = r["latency_ms"]
        ci = lat["mean_ci95_ms"]
        frac = r.get("fraction_of_peak")
        lines.append(
            f"| {r['name']} | {r['backend']} | {r['batch']} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | "
            f"{lat['p99_ms']:.2f} | {lat['mean_ms']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) | "
            f"{_fmt(r.get('throughput_per_s'), '.1f')} | {_fmt(r.get('memory', {}).get('peak_rss_mb'), '.0f')} | "
            f"{_fmt(r.get('flops', {}).get('gflops'), '.2f')} | "
            f"{'-' if frac is None else f'{100 * frac:.1f}'} | "
            f"{_fidelity(r.get('fidelity') or {})} |")
    staged = [r for r in doc["rows"] if r.get("stages_ms") and not r.get("skipped")]
    if staged:
        stages = list(dict.fromkeys(s for r in staged for s in r["stages_ms"]))
        lines += ["", "Per-stage p50 (ms):", "", "| name | backend | batch | " + " | ".join(stages) + " |",
                  "|---|---|---|" + "---|" * len(stages)]
        for r in staged:
            lines.append(f"| {r['name']} | {r['backend']} | {r['batch']} | "
                         + " | ".join(_fmt(r["stages_ms"].get(s)) for s in stages) + " |")
    baseline = doc.get("settings", {}).get("baseline")
    if baseline:
        ratios = ratios_within(doc, baseline)
        if ratios:
            lines += ["", f"Speed-up over {baseline} (ratio of p50, same run):", "",
                      "| name | batch | backend | speed-up |", "|---|---|---|---|"]
            lines += [f"| {x['name']} | {x['batch']} | {x['backend']} | {x['speedup_p50']:.2f}x |" for x in ratios]
    return "\n".join(lines)


def compare_markdown(rows: list[dict], a: str, b: str) -> str:
    lines = [f"Speed-up of B = {b} over A = {a} (ratio of p50; > 1: B faster)", "",
             "| name | backend | batch | A p50 ms | B p50 ms | B over A |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['backend']} | {r['batch']} | {r['a_p50_ms']:.2f} | {r['b_p50_ms']:.2f} | "
                     f"{r['speedup_b_over_a']:.2f}x |")
    if not rows:
        lines.append("| (no row of B matches a row of A on name, backend and batch) | | | | | |")
    return "\n".join(lines)


def plot_png(doc: dict, out: str | Path) -> Path | None:
    """Horizontal bars of p50 latency per (name, backend, batch), stacked by stage where rows have stages,
    with p90 whiskers. Returns None (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    rows = [r for r in doc["rows"] if r.get("latency_ms") and not r.get("skipped")]
    if not rows:
        return None
    labels = [f"{r['name']} | {r['backend']} | b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    y = list(range(len(rows)))[::-1]
    stages = list(dict.fromkeys(s for r in rows for s in (r.get("stages_ms") or {})))
    if stages:
        left = [0.0] * len(rows)
        cmap = plt.get_cmap("tab10")
        for k, s in enumerate(stages):
            w = [(r.get("stages_ms") or {}).get(s, 0.0) for r in rows]
            ax.barh(y, w, left=left, color=cmap(k % 10), label=s)
            left = [a + b for a, b in zip(left, w)]
        ax.legend(loc="lower right", fontsize=8)
    else:
        p50 = [r["latency_ms"]["p50_ms"] for r in rows]
        p90 = [r["latency_ms"]["p90_ms"] for r in rows]
        ax.barh(y, p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90)]], color="tab:blue",
                capsize=3, label="p50 (whisker: p90)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("latency, ms (p50" + (", stacked by stage)" if stages else ")"))
    m = doc.get("machine", {})
    ax.set_title(f"edgeseg bench {doc['benchmark']} - {m.get('cpu', '')} x{m.get('cores', '')}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
