"""``python -m tqgen tune``: time candidate launch configs on this GPU and record the fastest.

The search lives here, beside the benchmark harness it times with; ``tqgen.tuning`` keeps only
what the hot path reads (arch limits, defaults, shape buckets, the tune cache and its writer).

For each problem (one op at a representative shape) the tuner

1. runs it once while recording which variant and shape bucket the dispatcher looks up,
   so the cache key is exactly what the hot path will ask for;
2. runs it with the arch's documented default config and keeps that output as the reference;
3. for every candidate config (skipping those whose shared-memory estimate exceeds the
   arch; Triton's out-of-resources error is caught per candidate) forces it with
   ``cache.override``, checks one poisoned launch against the reference, and times it
   (``do_bench`` median, L2 flushed);
4. keeps the fastest verified candidate only if it beats the default by more than the
   measured noise (the default is timed first and last), re-verifies it on fresh random
   inputs, and merges the entry, with every candidate's timing, into
   ``tune_cache/<arch>.json`` (atomically, under this GPU's name).

Decode is searched in two stages: the tile (BLOCK_N, warps, stages), then the split policy
(SPLIT_MIN_TOKENS, SPLIT_WAVES; the space is ``tqgen.tuning.splits.search_candidates``) for the
best tile.  Everything runs under a wall-clock budget
(``--quick``: a handful of candidates, ~2-3 minutes on an H100; ``TQGEN_TUNE_BUDGET_S``
overrides); each finished entry is written at once, so an interrupted run keeps its work.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tabulate import tabulate

from tqgen.bench.common import (
    Deadline,
    Timer,
    codec,
    compress,
    default_timer,
    machine_facts,
    outputs_of,
    randn,
    rel_l2,
    short_error,
    sync,
    tq_attention,
)
from tqgen.codegen.context import next_pow2
from tqgen.paths import TUNE_CACHE_DIR
from tqgen.quant.packing import packed_width
from tqgen.spec import Family, VariantSpec
from tqgen.testing import TOLERANCES, poison_
from tqgen.tuning import splits
from tqgen.tuning.arch import ArchLimits, check_arch, current_arch, interpreting
from tqgen.tuning.cache import invalidate, now_utc, override, record_lookups, write_entries
from tqgen.tuning.defaults import Config, default_config

QUICK_BUDGET_S = 150.0
FULL_BUDGET_S = 3600.0
MIN_GAIN = 0.02  # a candidate must beat the default by this much (or the measured noise) to be kept

# Shapes the benchmarks and the HF end-to-end run use: D=128, 32 q / 8 kv heads.
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
KV_MODES: dict[str, tuple[int | None, int | None]] = {
    "fp": (None, None),
    "K4": (4, None),
    "K4V4": (4, 4),
    "K3V3": (3, 3),
    "K2V2": (2, 2),
}
DECODE_LONG = ((1, 131072), (8, 32768), (32, 8192))
DECODE_SHORT = (1, 4096)
E2E_DECODE = ((1, 32768), (8, 32768))  # bench/e2e.py keeps its context inside the 32768 bucket


# ------------------------------------------------------------------ problems
class Problem:
    """One op at one shape: builds its inputs and says whether two outputs agree."""

    families: tuple[Family, ...] = ()

    @property
    def label(self) -> str:
        raise NotImplementedError

    def expected_id(self) -> str:
        """The variant id the dispatcher should pick (used by ``--only`` before building anything)."""
        raise NotImplementedError

    def build(self, device: torch.device, seed: int) -> Callable[[], object]:
        """Fresh random inputs and preallocated outputs; returns a call that launches the op."""
        raise NotImplementedError

    def compare(self, actual: list[torch.Tensor], expected: list[torch.Tensor]) -> tuple[bool, str]:
        """Float outputs within the fp16 relative-L2 tolerance (NaN fails)."""
        worst = 0.0
        for a, e in zip(actual, expected, strict=True):
            err = rel_l2(a, e)
            if not err <= TOLERANCES[torch.float16]["rel_l2"]:  # also catches NaN
                return False, f"rel L2 {err:.2e}"
            worst = max(worst, err)
        return True, f"rel L2 {worst:.1e}"

    def shape(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class AttentionProblem(Problem):
    """``tqgen.attention.attention`` on random q/K/V, K/V compressed per ``mode``."""

    kind: str  # "decode" or "prefill" (what the dispatcher should choose)
    mode: str  # key of KV_MODES
    batch: int
    n_q: int
    n_kv: int
    causal: bool = False
    q_heads: int = Q_HEADS
    kv_heads: int = KV_HEADS
    head_dim: int = HEAD_DIM

    families = (Family.ATTN_DECODE, Family.ATTN_PREFILL)

    @property
    def label(self) -> str:
        causal = " causal" if self.causal else ""
        return f"{self.kind} {self.mode}{causal} B={self.batch} Nq={self.n_q} Nkv={self.n_kv}"

    def expected_id(self) -> str:
        kb, vb = KV_MODES[self.mode]
        family = Family.ATTN_DECODE if self.kind == "decode" else Family.ATTN_PREFILL
        group = self.q_heads // self.kv_heads
        return VariantSpec(family, self.head_dim, kb, vb, group, self.causal, kb is not None or vb is not None).id

    def build(self, device: torch.device, seed: int) -> Callable[[], object]:
        kb, vb = KV_MODES[self.mode]
        q = randn((self.batch, self.q_heads, self.n_q, self.head_dim), device, seed=seed)
        k = randn((self.batch, self.kv_heads, self.n_kv, self.head_dim), device, seed=seed + 1)
        k = compress(k, kb) if kb else k
        v = randn((self.batch, self.kv_heads, self.n_kv, self.head_dim), device, seed=seed + 2)
        v = compress(v, vb) if vb else v
        out = torch.empty_like(q)
        causal = self.causal
        return lambda: tq_attention(q, k, v, is_causal=causal, out=out)


@dataclass(frozen=True)
class CompressProblem(Problem):
    """``TurboQuant.compress`` of random fp16 vectors into a preallocated buffer."""

    bits: int
    tokens: int
    heads: int = KV_HEADS
    head_dim: int = HEAD_DIM

    families = (Family.COMPRESS,)

    @property
    def label(self) -> str:
        return f"compress {self.bits}-bit {self.tokens} tok x {self.heads} heads"

    def expected_id(self) -> str:
        return VariantSpec(Family.COMPRESS, self.head_dim, self.bits, rotate=True).id

    def build(self, device: torch.device, seed: int) -> Callable[[], object]:
        tq = codec(self.head_dim, self.bits)
        x = randn((1, self.heads, self.tokens, self.head_dim), device, seed=seed)
        buf = tq.empty(1, self.heads, self.tokens, device)
        return lambda: tq.compress(x, out=buf, start=0)

    def compare(self, actual: list[torch.Tensor], expected: list[torch.Tensor]) -> tuple[bool, str]:
        """Codes identical but for rare rounding ties; norms to fp32 rounding."""
        packed, norms = actual
        mismatch = float((packed != expected[0]).float().mean())
        norm_err = rel_l2(norms, expected[1])
        ok = mismatch <= 1e-3 and norm_err <= 1e-5
        return ok, f"{mismatch:.1e} of code bytes differ, norms rel L2 {norm_err:.1e}"


def plan(quick: bool) -> list[Problem]:
    """The problems to tune, most important first (the shapes of README's Performance tables, then the rest)."""
    d = lambda mode, b, n, causal=False: AttentionProblem("decode", mode, b, 1, n, causal)  # noqa: E731
    # K4V4 decode at the bench shapes and the HF path's (tqgen.hf passes is_causal=False for one query).
    problems: list[Problem] = [d("K4V4", b, n) for b, n in (*DECODE_LONG, DECODE_SHORT, *E2E_DECODE)]
    problems += [
        AttentionProblem("prefill", "fp", 1, 8192, 8192, causal=True),
        AttentionProblem("prefill", "K4V4", 1, 8192, 8192, causal=True),
        AttentionProblem("prefill", "K4V4", 1, 1024, 32768, causal=True),
        CompressProblem(4, 65536),
    ]
    problems += [d(mode, b, n) for mode in ("K3V3", "K2V2", "K4") for b, n in DECODE_LONG]
    problems += [d("fp", b, n) for b, n in DECODE_LONG]
    if quick:
        return _unique(problems)
    for mode in ("K4V4", "K3V3", "K2V2", "K4"):
        for b, n in itertools.product((1, 2, 4, 8, 16, 32), (1024, 4096, 16384, 65536)):
            if b * n <= 1 << 20:
                problems.append(d(mode, b, n))
    for mode in ("fp", "K4", "K4V4", "K3V3", "K2V2"):
        for n in (1024, 2048, 4096, 8192, 16384):
            problems.append(AttentionProblem("prefill", mode, 1, n, n, causal=True))
        problems.append(AttentionProblem("prefill", mode, 1, 1024, 32768, causal=True))
    problems += [CompressProblem(b, 65536) for b in (3, 2)]
    return _unique(problems)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def select_problems(problems: list[Problem], pattern: str | None) -> list[Problem]:
    """``--only``: a shell pattern on the variant id (a bare word matches as a substring)."""
    if not pattern:
        return problems
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [p for p in problems if fnmatch.fnmatchcase(p.expected_id(), pattern)]


# ---------------------------------------------------------------- candidates
_TILE_KEYS = {
    Family.ATTN_DECODE: ("BLOCK_N", "num_warps", "num_stages"),
    Family.ATTN_PREFILL: ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"),
    Family.COMPRESS: ("BLOCK_T", "num_warps", "num_stages", "PROGRAMS_PER_SM"),
}
_QUICK_TILES = {
    Family.ATTN_DECODE: [(64, 4, 3), (128, 4, 2), (128, 8, 3), (32, 4, 3), (64, 8, 4)],
    Family.ATTN_PREFILL: [(128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 128, 4, 2),
                          (64, 32, 4, 3), (64, 64, 4, 4), (64, 128, 8, 3)],
    Family.COMPRESS: [(128, 8, 1, 1), (32, 4, 1, 2), (64, 4, 1, 3), (64, 4, 1, 4)],
}
_FULL_AXES = {
    Family.ATTN_DECODE: ((32, 64, 128, 256), (2, 4, 8), (1, 2, 3, 4)),
    Family.ATTN_PREFILL: ((64, 128), (32, 64, 128), (4, 8), (1, 2, 3, 4)),
    Family.COMPRESS: ((32, 64, 128), (4, 8), (1, 2), (1, 2, 3, 4)),
}


def tile_candidates(spec: VariantSpec, default: Config, quick: bool) -> list[Config]:
    """The default first, then tile variations (only keys the default has are varied)."""
    keys = _TILE_KEYS.get(spec.family)
    if keys is None:
        return [dict(default)]
    tiles = _QUICK_TILES[spec.family] if quick else itertools.product(*_FULL_AXES[spec.family])
    return _dedupe([dict(default)] + [{**default, **dict(zip(keys, tile))} for tile in tiles])


def split_candidates(best: Config, quick: bool) -> list[Config]:
    """Decode's second stage: the split policy (minimum keys per split, waves of SMs to fill),
    with the best tile fixed."""
    if "SPLIT_MIN_TOKENS" not in best:
        return []
    return _dedupe(splits.search_candidates(best, quick))


def _dedupe(configs: list[Config]) -> list[Config]:
    seen, out = set(), []
    for c in configs:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def known_bad(spec: VariantSpec, config: Config, limits: ArchLimits) -> str | None:
    """Why a config must not even be launched on a GPU (it breaks the process, not just the output).

    Compressed-V prefill with BLOCK_M=128 gave NaN and an illegal address with Triton 3.6 on an
    H200 (2026-11-21, see tuning/defaults.py); an illegal address kills the CUDA context and
    every candidate after it, so these are skipped rather than caught.  (GPU code generation
    only: the interpreter runs them fine.)
    """
    if limits.interpreter:
        return None
    if spec.family is Family.ATTN_PREFILL and spec.v_bits is not None and config.get("BLOCK_M", 0) >= 128:
        return "compressed-V prefill with BLOCK_M >= 128 is broken on Triton 3.6 (tuning/defaults.py)"
    return None


def smem_estimate(spec: VariantSpec, config: Config) -> int:
    """Rough shared-memory bytes of a config: the pipelined K/V (or input) tiles per stage, plus
    the Q tile and, for codes, the dequantised fp16 tiles the dots read.  Used only to skip
    configs that clearly cannot fit; Triton's own out-of-resources error catches the rest."""
    d_pad = max(16, next_pow2(spec.head_dim))
    stages = max(1, config.get("num_stages", 1))
    if spec.family.is_attention:
        def row(bits: int | None) -> int:
            return d_pad * 2 if bits is None else packed_width(spec.head_dim, bits) + 4

        block_n = config["BLOCK_N"]
        block_m = config.get("BLOCK_M", 16)
        dequant = sum(block_n * d_pad * 2 for bits in (spec.k_bits, spec.v_bits) if bits is not None)
        return stages * block_n * (row(spec.k_bits) + row(spec.v_bits)) + block_m * d_pad * 2 + dequant
    if "BLOCK_T" in config:
        return stages * config["BLOCK_T"] * d_pad * 2 + config["BLOCK_T"] * d_pad * 4
    return 0


# -------------------------------------------------------------------- tuning
@dataclass
class TuneContext:
    """Where and how to tune, and what has been done in this run."""

    arch: str
    device: torch.device
    timer: Timer
    gpu_name: str
    gpu_meta: dict[str, Any]
    quick: bool = True
    deadline: Deadline = field(default_factory=lambda: Deadline(QUICK_BUDGET_S))
    cache_dir: Any = None  # None: tqgen.tuning.cache.TUNE_CACHE_DIR
    log: Callable[[str], None] = print
    max_candidates: int | None = None  # cap per stage (tests)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> summary

    @property
    def limits(self) -> ArchLimits:
        return check_arch(self.arch)


def _fmt(config: Config) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _target_lookup(problem: Problem, fn: Callable[[], object]):
    """Run once, recording lookups; the first one of the problem's families is what we tune."""
    with record_lookups() as seen:
        fn()
        sync()
    for lookup in seen:
        if lookup.spec.family in problem.families:
            return lookup
    families = ", ".join(f.value for f in problem.families)
    got = ", ".join(sorted({f"{lk.spec.id}|{lk.bucket}" for lk in seen})) or "none"
    raise RuntimeError(f"the op made no config_for lookup of family {families} (lookups: {got})")


def _run_checked(
    ctx: TuneContext, problem: Problem, spec: VariantSpec, fn: Callable[[], object], config: Config,
    reference: list[torch.Tensor] | None,
) -> tuple[list[torch.Tensor], str]:
    """One launch with ``config`` forced on poisoned outputs; returns its outputs and the check."""
    with override(spec.id, config):
        buffers = outputs_of(fn())  # the preallocated outputs (also compiles this config)
        for t in buffers:
            poison_(t)
        with record_lookups() as seen:
            outputs = outputs_of(fn())
        sync()
    if not any(lk.spec.id == spec.id and lk.overridden for lk in seen):
        raise RuntimeError("the forced config was not used (a dispatcher memoises configs without registering an invalidator)")
    if reference is None:
        return outputs, "reference"
    ok, detail = problem.compare(outputs, reference)
    if not ok:
        raise ValueError(f"output differs from the default config's: {detail}")
    return outputs, detail


def _measure(ctx: TuneContext, problem: Problem, spec: VariantSpec, fn: Callable[[], object],
             config: Config, reference: list[torch.Tensor]) -> dict[str, Any]:
    """Check, then time one candidate; failures are recorded, never raised."""
    record: dict[str, Any] = {"config": dict(config)}
    estimate = smem_estimate(spec, config)
    if estimate > ctx.limits.smem_per_block:
        record["skipped"] = f"shared memory estimate {estimate} B > {ctx.limits.smem_per_block} B"
    elif known_bad(spec, config, ctx.limits):
        record["skipped"] = known_bad(spec, config, ctx.limits)
    if "skipped" in record:
        ctx.log(f"      {_fmt(config):58s} skipped ({record['skipped']})")
        return record
    try:
        _, record["check"] = _run_checked(ctx, problem, spec, fn, config, reference)
        with override(spec.id, config):
            record["ms"] = ctx.timer(fn)
    except Exception as exc:  # noqa: BLE001 - out of resources, compile error, wrong output
        record["error"] = short_error(exc)
        try:
            sync()
        except Exception:  # noqa: BLE001
            pass
    status = f"{record['ms']:.4f} ms" if "ms" in record else f"FAILED {record['error']}"
    ctx.log(f"      {_fmt(config):58s} {status}")
    return record


def _fastest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    timed = [r for r in records if r.get("ms") is not None]
    return min(timed, key=lambda r: r["ms"]) if timed else None


def tune_problem(ctx: TuneContext, problem: Problem) -> dict[str, Any] | None:
    """Tune one problem; returns the summary of the entry written (None if skipped)."""
    fn = problem.build(ctx.device, seed=1)
    lookup = _target_lookup(problem, fn)
    spec, key = lookup.spec, f"{lookup.spec.id}|{lookup.bucket}"
    if key in ctx.done:
        ctx.log(f"      -> {key}: already tuned in this run")
        return None
    ctx.log(f"      -> {key}")
    default = default_config(spec, ctx.limits)
    reference, _ = _run_checked(ctx, problem, spec, fn, default, None)
    reference = [t.clone() for t in reference]

    records: list[dict[str, Any]] = []
    stages = [tile_candidates(spec, default, ctx.quick)]
    stage = 0
    while stage < len(stages):
        configs = stages[stage][: ctx.max_candidates] if ctx.max_candidates else stages[stage]
        for config in configs:
            if records and ctx.deadline.expired():
                ctx.log("      time budget spent: choosing among what was measured")
                break
            records.append(_measure(ctx, problem, spec, fn, config, reference))
        best = _fastest(records)
        if stage == 0 and best is not None and not ctx.deadline.expired():
            stages.append(split_candidates(best["config"], ctx.quick))
        stage += 1

    default_ms = records[0].get("ms")
    if default_ms is None:
        raise RuntimeError(f"the default config failed: {records[0].get('error') or records[0].get('skipped')}")
    again = _measure(ctx, problem, spec, fn, default, reference).get("ms")
    noise = abs(again - default_ms) / min(again, default_ms) if again else 0.0
    default_ms = min(default_ms, again or default_ms)
    best = _fastest(records)
    chosen, chosen_ms = default, default_ms
    if best is not None and best["ms"] < default_ms * (1.0 - max(MIN_GAIN, noise)):
        chosen, chosen_ms = best["config"], best["ms"]
    del fn, reference

    fresh = "same as the default"
    if chosen != default:
        fresh_fn = problem.build(ctx.device, seed=101)
        try:
            expected, _ = _run_checked(ctx, problem, spec, fresh_fn, default, None)
            expected = [t.clone() for t in expected]
            _, fresh = _run_checked(ctx, problem, spec, fresh_fn, chosen, expected)
        except Exception as exc:  # noqa: BLE001 - never keep a config that is wrong on fresh inputs
            fresh = f"rejected on fresh inputs ({short_error(exc)}); keeping the default"
            chosen, chosen_ms = default, default_ms
        del fresh_fn

    entry = {
        "config": chosen,
        "ms": chosen_ms,
        "default_ms": default_ms,
        "speedup": default_ms / chosen_ms,
        "noise": noise,
        "verified": fresh,
        "problem": {"type": type(problem).__name__, **problem.shape()},
        "date": now_utc(),
        "quick": ctx.quick,
        "candidates": records,
    }
    write_entries(ctx.arch, ctx.gpu_name, {key: entry}, ctx.gpu_meta, ctx.cache_dir)
    summary = {"key": key, "default_ms": default_ms, "ms": chosen_ms, "speedup": default_ms / chosen_ms,
               "candidates": len(records), "config": _fmt(chosen)}
    ctx.done[key] = summary
    ctx.log(f"      chosen {_fmt(chosen)}: {chosen_ms:.4f} ms vs default {default_ms:.4f} ms "
            f"({default_ms / chosen_ms:.2f}x, noise {noise:.1%}); {fresh}")
    return summary


def tune(ctx: TuneContext, problems: list[Problem]) -> list[dict[str, Any]]:
    """Tune ``problems`` in order until the budget is spent; returns the entries written."""
    summaries: list[dict[str, Any]] = []
    for i, problem in enumerate(problems, 1):
        if ctx.deadline.expired():
            ctx.log(f"time budget spent: {len(problems) - i + 1} problem(s) left untuned")
            break
        ctx.log(f"[{i:2d}/{len(problems)}] {problem.label}  ({ctx.deadline.elapsed():.0f} s elapsed)")
        try:
            summary = tune_problem(ctx, problem)
        except Exception as exc:  # noqa: BLE001 - one broken variant must not stop the others
            ctx.log(f"      FAILED: {short_error(exc, 500)}")
            summary = None
        finally:
            invalidate()
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        if summary is not None:
            summaries.append(summary)
    return summaries


# ----------------------------------------------------------------------- CLI
def gpu_meta(device: torch.device, quick: bool) -> dict[str, Any]:
    env = machine_facts(device)
    return {k: env.get(k) for k in ("sm_count", "triton", "torch", "tqgen", "git", "cuda", "date")} | {"quick": quick}


def run_tune(args: argparse.Namespace) -> int:
    """``python -m tqgen tune --arch sm_90 [--only PATTERN] [--quick]``."""
    if interpreting():
        print("tqgen tune: TRITON_INTERPRET is set; timings in the CPU interpreter mean nothing. "
              "Unset it and run on a CUDA GPU.", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("tqgen tune: no CUDA GPU found. Tuning times kernels on the GPU it tunes for; "
              "run it on that GPU (an arch without tuned entries uses documented defaults).", file=sys.stderr)
        return 2
    arch = current_arch()
    if args.arch and args.arch != arch:
        print(f"tqgen tune: --arch {args.arch} given but this GPU is {arch}; tune on a {args.arch} GPU.",
              file=sys.stderr)
        return 2
    check_arch(arch)
    quick = bool(getattr(args, "quick", False))
    problems = select_problems(plan(quick), getattr(args, "only", None))
    if not problems:
        print(f"tqgen tune: no problem matches --only {args.only!r}", file=sys.stderr)
        return 2
    budget = float(os.environ.get("TQGEN_TUNE_BUDGET_S", QUICK_BUDGET_S if quick else FULL_BUDGET_S))
    device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device)
    ctx = TuneContext(
        arch=arch, device=device, timer=default_timer(device, quick=quick), gpu_name=name,
        gpu_meta=gpu_meta(device, quick), quick=quick, deadline=Deadline(budget),
    )
    print(f"tqgen tune: {arch} on {name} ({ctx.gpu_meta['sm_count']} SMs), {len(problems)} problem(s), "
          f"{'quick' if quick else 'full'} search, budget {budget:.0f} s -> {TUNE_CACHE_DIR / (arch + '.json')}")
    summaries = tune(ctx, problems)
    if summaries:
        rows = [(*s["key"].split("|"), f"{s['default_ms']:.4f}", f"{s['ms']:.4f}", f"{s['speedup']:.2f}x",
                 s["candidates"], s["config"]) for s in summaries]
        print()
        print(tabulate(rows, headers=["variant", "bucket", "default ms", "tuned ms", "gain", "tried", "config"],
                       tablefmt="github", disable_numparse=True))
    print(f"\n{len(summaries)} entr{'y' if len(summaries) == 1 else 'ies'} written in {ctx.deadline.elapsed():.0f} s "
          f"to {TUNE_CACHE_DIR / (arch + '.json')}")
    return 0 if summaries else 1
