"""``python -m tqgen bench``: tqgen's kernels side by side with torch SDPA on this GPU.

Suites (``--suite``, comma-separated or ``all``): ``decode``, ``prefill``, ``compress``,
``e2e``.  Every run first measures the device copy bandwidth, the floor the memory-bound
suites are judged against; every suite then times its cases against SDPA fp16 in the same
process, prints a table with its targets (README "Performance"), and (``--json``) the results are saved
after each suite, so an interrupted run keeps what it finished.  Each suite has a
wall-clock budget; cases past it are recorded as skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any, Callable

import torch

from tqgen.bench.common import BenchContext, Deadline, copy_bandwidth, default_timer, machine_facts
from tqgen.tuning.arch import interpreting

SUITES = ("decode", "prefill", "compress", "e2e")
# Seconds each suite may take (it stops starting new cases after that).
# Sum < the GPU session's 240 s bench limit; typical use is well under half of each.
# e2e compiles the model (reduce-overhead) for two contenders and each batch size.
BUDGET_S = {"decode": 240, "prefill": 150, "compress": 20, "e2e": 300}
QUICK_BUDGET_S = {"decode": 45, "prefill": 30, "compress": 15, "e2e": 240}


def parse_suites(text: str) -> list[str]:
    names = [s.strip() for s in (text or "decode").split(",") if s.strip()]
    if names == ["all"]:
        return list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}: choose from {', '.join(SUITES)} or all")
    return names


def suite_runner(name: str) -> Callable[[BenchContext], dict[str, Any]]:
    return importlib.import_module(f"tqgen.bench.{name}").run


def load_compare(name: str | None) -> tuple[Any, str | None]:
    """The ``--compare`` package's Triton module, or None with the reason."""
    if not name:
        return None, None
    if name != "turboquant_vllm":
        return None, f"--compare supports turboquant_vllm only, got {name!r}"
    try:
        return importlib.import_module("turboquant_vllm.triton"), None
    except Exception as exc:  # noqa: BLE001 - absent or broken
        return None, f"turboquant_vllm is not importable ({type(exc).__name__}: {exc}); comparison skipped"


def run_suites(ctx: BenchContext, names: list[str], results: dict[str, Any], budgets: dict[str, float],
               save: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Run ``names`` in order into ``results["suites"]``, saving after each."""
    from tqgen.bench import report  # not at import: `python -m tqgen.bench.report` runs it as __main__
    for name in names:
        ctx.deadline = Deadline(budgets[name])
        start = time.monotonic()
        try:
            result = suite_runner(name)(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken suite must not lose the others
            result = {"rows": [{"suite": name, "case": "-", "impl": "-", "error": f"suite failed: {type(exc).__name__}: {exc}"}]}
        result["seconds"] = round(time.monotonic() - start, 1)
        results["suites"][name] = result
        save(results)
        print(f"\n## {name} ({result['seconds']} s)\n")
        print(report.suite_table(name, result), flush=True)
        if ctx.on_gpu:
            torch.cuda.empty_cache()
    return results


def run_bench(args: argparse.Namespace) -> int:
    """``python -m tqgen bench --suite decode|prefill|compress|e2e|all [--json F] [--plot F.png] [--compare P]``."""
    try:
        names = parse_suites(args.suite)
    except ValueError as exc:
        print(f"tqgen bench: {exc}", file=sys.stderr)
        return 2
    if interpreting() or not torch.cuda.is_available():
        print("tqgen bench: needs a CUDA GPU (and TRITON_INTERPRET unset): the shapes are README's, "
              "far too large for the CPU interpreter. The CPU smoke test is tests/bench/test_bench_cpu.py.",
              file=sys.stderr)
        return 2
    from tqgen.bench import report

    quick = bool(getattr(args, "quick", False))
    device = torch.device("cuda", torch.cuda.current_device())
    timer = default_timer(device, quick=quick)
    compare, compare_note = load_compare(getattr(args, "compare", None))
    if compare_note:
        print(f"tqgen bench: {compare_note}")

    meta = machine_facts(device)
    print(f"tqgen bench on {meta['gpu']} ({meta['sm_count']} SMs), torch {meta['torch']}, triton {meta['triton']}: "
          f"suites {', '.join(names)}{' (quick)' if quick else ''}", flush=True)
    copy = copy_bandwidth(device, timer)
    print(f"device copy bandwidth (read + write, 1 GiB): {copy:.2f} TB/s", flush=True)
    meta.update(
        copy_tbps=copy,
        timer="triton.testing.do_bench median, L2 flushed before every call, "
              + ("warmup 10 ms, rep 40 ms" if quick else "warmup 25 ms, rep 100 ms"),
        shapes="head_dim 128, 32 query heads, 8 KV heads, fp16",
        quick=quick,
        compare=getattr(args, "compare", None),
        compare_note=compare_note,
    )
    results: dict[str, Any] = {"meta": meta, "suites": {}}
    ctx = BenchContext(device=device, timer=timer, copy_tbps=copy, quick=quick, compare=compare,
                       log=lambda msg: print(f"  {msg}", flush=True))
    json_path = getattr(args, "json", None)
    save = (lambda r: report.write_json(json_path, r)) if json_path else (lambda r: None)
    try:
        run_suites(ctx, names, results, QUICK_BUDGET_S if quick else BUDGET_S, save)
    except KeyboardInterrupt:  # e.g. the session's `timeout -s INT`: keep what finished
        print("\ntqgen bench: interrupted; saving the suites that finished", file=sys.stderr)
        save(results)
    if getattr(args, "plot", None):
        if report.plot_decode(results, args.plot):
            print(f"\nplot: {args.plot}")
        else:
            print("\nplot: skipped (no decode rows, or matplotlib missing)")
    print("\n## targets\n")
    print(report.summary_table(results))
    if json_path:
        print(f"\nresults: {json_path}")
    return 0
