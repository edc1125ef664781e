"""Command line: ``python -m tqgen {build,list,info,tune,bench,eval}``.

This module only parses arguments and prints; each command's work lives in its own module
(``build``: tqgen.codegen.build, ``tune``: tqgen.bench.tune, ``bench``: tqgen.bench).
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate


def _cmd_build(args: argparse.Namespace) -> int:
    from tqgen.codegen.build import build

    report = build(args.arch, only=args.only, check=args.check)
    rows = sorted(report.per_family.items())
    print(tabulate(rows, headers=["family", "files"], tablefmt="github"))
    if args.check:
        if report.stale:
            print(f"\ngenerated/ is stale for arch {report.arch}: {len(report.stale)} file(s) differ from the templates:")
            for name in report.stale[:50]:
                print(f"  {name}")
            if len(report.stale) > 50:
                print(f"  ... and {len(report.stale) - 50} more")
            print("run `python -m tqgen build` and commit generated/")
            return 1
        print(f"\ngenerated/ is up to date ({len(report.unchanged)} files, arch {report.arch})")
        return 0
    print(
        f"\narch {report.arch}: {len(report.written)} written, {len(report.unchanged)} unchanged, "
        f"{len(report.removed)} removed"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from tqgen.spec import default_matrix, select

    specs = select(default_matrix(), args.only)
    if not specs:
        raise ValueError(f"--only {args.only!r} matches no variant of the matrix")
    rows = [
        (s.id, s.family.value, s.head_dim, s.k_bits or "-", s.v_bits or "-", s.group, s.causal, s.rotate)
        for s in specs
    ]
    print(tabulate(rows, headers=["id", "family", "D", "k_bits", "v_bits", "group", "causal", "rotate"], tablefmt="github"))
    print(f"\n{len(rows)} variant(s)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from tqgen.info import info_rows
    from tqgen.tuning.arch import check_arch

    if args.arch is not None:
        check_arch(args.arch)

    print(tabulate(info_rows(args.arch), tablefmt="plain"))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from tqgen.bench.tune import run_tune

    return run_tune(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from tqgen.bench import run_bench

    return run_bench(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqgen.eval import run_eval

    return run_eval(args)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tqgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="render the variant matrix into generated/")
    p.add_argument("--arch", default=None, help="target arch, e.g. sm_89 or sm_90 (default sm_90; the kernels are the same for every arch)")
    p.add_argument("--only", default=None, help="id pattern (glob, or a substring)")
    p.add_argument("--check", action="store_true", help="write nothing; fail if generated/ is stale")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("list", help="show the variant matrix")
    p.add_argument("--only", default=None, help="id pattern (glob, or a substring)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="GPU, versions and tune-cache coverage")
    p.add_argument("--arch", default=None, help="arch to report coverage for (default: this machine's)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("tune", help="time candidate configs on this GPU and update tune_cache/")
    p.add_argument("--arch", default=None, help="must match this GPU (default: detected)")
    p.add_argument("--only", default=None, help="id pattern (glob, or a substring)")
    p.add_argument("--quick", action="store_true", help="fewer candidates and shapes")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("bench", help="benchmarks against torch SDPA on this GPU")
    p.add_argument("--suite", default="decode", help="decode, prefill, compress, e2e or all")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plot", default=None, help="write a PNG of time against context length")
    p.add_argument("--compare", default=None, help="also time another package, e.g. turboquant_vllm")
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.set_defaults(func=_cmd_bench)

    from tqgen.eval import add_arguments as add_eval_arguments

    p = sub.add_parser("eval", help="perplexity, KL and top-1 of a model on a text with a compressed cache")
    add_eval_arguments(p)
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad arguments: say what, no traceback
        print(f"tqgen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
