"""Presenting benchmark results: tabulate tables, the JSON file, the time-against-length plot.

``python -m tqgen.bench.report bench.json`` prints the tables and the target summary of a
saved run (the GPU session script ends with it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from tqgen.tuning.cache import atomic_write_json

# (header, row key, format) per suite; a missing value prints as "-".
_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "decode": [("case", "case", "s"), ("impl", "impl", "s"), ("mode", "mode", "s"), ("ms", "ms", ".4f"),
               ("TB/s", "tbps", ".2f"), ("of copy", "frac_copy", "%"), ("vs SDPA", "vs_sdpa", "x"),
               ("target", "target", "s"), ("pass", "pass", "pass"), ("err", "check_rel_l2", ".0e"),
               ("host loop ms", "host_loop_ms", ".4f")],
    "prefill": [("case", "case", "s"), ("impl", "impl", "s"), ("mode", "mode", "s"), ("ms", "ms", ".3f"),
                ("TFLOP/s", "tflops", ".0f"), ("vs SDPA", "vs_sdpa", "%"), ("target", "target", "s"),
                ("pass", "pass", "pass"), ("err", "check_rel_l2", ".0e")],
    "compress": [("case", "case", "s"), ("mode", "mode", "s"), ("ms", "ms", ".4f"), ("TB/s", "tbps", ".2f"),
                 ("of copy", "frac_copy", "%"), ("target", "target", "s"), ("pass", "pass", "pass"),
                 ("code diff", "check_code_mismatch", ".0e")],
    "e2e": [("case", "case", "s"), ("impl", "impl", "s"), ("tok/s", "tokens_per_s", ".1f"),
            ("ms/step", "ms_per_step", ".1f"), ("of ceiling", "frac_ceiling", "%"), ("KV GiB", "kv_cache_gib", ".2f"),
            ("peak GiB", "peak_gib", ".1f"), ("compile s", "compile_s", ".0f"), ("vs SDPA", "vs_sdpa", "x"),
            ("vs SDPA compiled", "vs_sdpa_static", "x")],
}


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "pass":
        return "PASS" if value else "FAIL"
    if fmt == "%":
        return f"{100 * value:.0f}%"
    if fmt == "x":
        return f"{value:.2f}x"
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def suite_table(name: str, result: dict[str, Any]) -> str:
    """One suite's rows as a github-style table; errors listed under it."""
    columns = _COLUMNS.get(name, _COLUMNS["decode"])
    rows = [[_cell(row.get(key), fmt) for _, key, fmt in columns] for row in result.get("rows", [])]
    text = tabulate(rows, headers=[h for h, _, _ in columns], tablefmt="github", disable_numparse=True)
    errors = [f"  {row.get('case')} {row.get('impl')} {row.get('mode', '')}: {row['error']}"
              for row in result.get("rows", []) if row.get("error")]
    if errors:
        text += "\nerrors:\n" + "\n".join(errors)
    graph = result.get("cuda_graph")
    if graph and graph.get("checked"):
        text += "\n" + graph_line(graph)
    return text


def graph_line(graph: dict[str, Any]) -> str:
    if not graph.get("capturable"):
        return f"CUDA graph ({graph.get('shape')}): NOT capturable: {graph.get('error')}"
    ok = "output matches eager" if graph.get("replay_ok") else f"output WRONG (rel L2 {graph.get('replay_rel_l2'):.1e})"
    return (f"CUDA graph ({graph.get('shape')}): captured and replayed, {ok}; replay {graph.get('replay_ms', float('nan')):.4f} ms "
            f"vs eager {graph.get('eager_ms', float('nan')):.4f} ms")


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row that carries a target, plus the CUDA-graph check."""
    out = []
    for suite, result in results.get("suites", {}).items():
        for row in result.get("rows", []):
            if "target" in row:
                out.append({"suite": suite, "case": row.get("case"), "mode": row.get("mode"),
                            "metric": row.get("target_metric"), "value": row.get(row.get("target_metric", "")),
                            "target": row["target"], "pass": row.get("pass"), "error": row.get("error")})
        graph = result.get("cuda_graph")
        if graph and graph.get("checked"):
            out.append({"suite": suite, "case": graph.get("shape"), "mode": "K4V4", "metric": "cuda graph",
                        "value": None, "target": "capture + replay",
                        "pass": bool(graph.get("capturable") and graph.get("replay_ok")), "error": graph.get("error")})
    return out


def summary_table(results: dict[str, Any]) -> str:
    """The targets, pass/fail, in one short table (printed last by the GPU session)."""
    rows = []
    for t in target_rows(results):
        fmt = "%" if t["metric"] in ("frac_copy",) or (t["metric"] == "vs_sdpa" and t["suite"] == "prefill") else "x"
        value = _cell(t["value"], fmt) if t["metric"] != "cuda graph" else "-"
        verdict = _cell(t["pass"], "pass") if t["pass"] is not None else "n/a"
        rows.append([t["suite"], t["case"], t["mode"], value, t["target"], verdict])
    meta = results.get("meta", {})
    head = (f"{meta.get('gpu') or meta.get('device')}, copy {meta.get('copy_tbps', float('nan')):.2f} TB/s, "
            f"torch {meta.get('torch')}, triton {meta.get('triton')}, {meta.get('date')}")
    passed = sum(1 for t in target_rows(results) if t["pass"])
    body = tabulate(rows, headers=["suite", "case", "mode", "value", "target", "result"], tablefmt="github",
                    disable_numparse=True)
    return f"{head}\n{body}\n{passed}/{len(rows)} targets met"


def write_json(path: str | Path, results: dict[str, Any]) -> None:
    """Atomic: a reader (or an interrupted run) never sees half a file."""
    atomic_write_json(Path(path), _jsonable(results))


def _jsonable(value: Any) -> Any:
    """Plain JSON types only (NaN/inf become null, tuples lists, anything else its str)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def plot_decode(results: dict[str, Any], path: str | Path) -> bool:
    """PNG of decode time against context length (B=1), one line per implementation and mode.

    Returns False (and writes nothing) when matplotlib is missing or there is nothing to plot.
    """
    rows = [r for r in results.get("suites", {}).get("decode", {}).get("rows", [])
            if r.get("B") == 1 and r.get("ms") is not None]
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        label = "torch SDPA fp16" if r["impl"] == "sdpa" else f"{r['impl']} {r['mode']}"
        series.setdefault(label, []).append((r["N_kv"], r["ms"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode attention time (ms)")
    meta = results.get("meta", {})
    ax.set_title(f"Decode, B=1, 32 q / 8 kv heads, D=128 - {meta.get('gpu') or meta.get('device')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def print_report(results: dict[str, Any]) -> None:
    for name, result in results.get("suites", {}).items():
        print(f"\n## {name}\n")
        print(suite_table(name, result))
    print("\n## targets\n")
    print(summary_table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tqgen.bench.report", description="print a saved bench JSON")
    parser.add_argument("json", help="file written by `python -m tqgen bench --json`")
    parser.add_argument("--summary", action="store_true", help="only the target summary")
    args = parser.parse_args(argv)
    path = Path(args.json)
    if not path.exists():
        print(f"{path}: no such file (did the bench step run?)", file=sys.stderr)
        return 1
    results = json.loads(path.read_text())
    if args.summary:
        print(summary_table(results))
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
