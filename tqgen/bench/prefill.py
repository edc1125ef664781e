"""Prefill suite: attention over a whole prompt (causal and not), and chunks of queries onto a cache.

Prefill is compute-bound, so results are TFLOP/s (causal: half the score matrix,
``2 * 2 * B * H * N * N * D / 2``) and the ratio to torch SDPA fp16 in the same run (chunks:
SDPA with the bottom-right causal bias, ``torch.nn.attention.bias.causal_lower_right``).
Targets: vanilla fp16 >= 90% of SDPA; compressed K/V >= 80% of SDPA, both for a whole prompt
(causal, B=1, N=8192) and for chunks of 1024 and 4096 queries onto a 32768-token K4V4 cache.
A compressed row times the public ``attention()`` (every pass of the method it takes: on a GPU,
decompress, rotations and the vanilla kernel, ``tqgen.ops.prefill_dequant``); a second row,
``tqgen fused``, times the fused compressed kernel (``force_prefill_method("fused")``), without
a target.  Whole-prompt fp rows also run at head_dim 64 and 256 (not ``quick``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tqgen.bench.common import (
    BenchContext,
    Target,
    captured,
    compress,
    dequantize,
    randn,
    ratio,
    rel_l2,
    tflops,
    time_sdpa,
    tq_attention,
    with_target,
)
from tqgen.bench.decode import HEAD_DIM, KV_HEADS, MODES, Q_HEADS
from tqgen.spec import Family, VariantSpec
from tqgen.testing import poison_
from tqgen.tuning.prefill_route import force_prefill_method, prefill_method

CHECK_REL_L2 = 2e-2
VANILLA_TARGET = 0.90  # fp16 K/V, of SDPA
COMPRESSED_TARGET = 0.80  # compressed K/V through attention(), of SDPA


@dataclass(frozen=True)
class PrefillCase:
    name: str
    batch: int
    n_q: int
    n_kv: int
    modes: tuple[str, ...]  # "fp" = uncompressed K/V, else a key of decode.MODES
    targets: tuple[tuple[str, float], ...] = ()  # (mode, minimum ratio to SDPA)
    causal: bool = True  # bottom-right aligned when n_q < n_kv
    head_dim: int | None = None  # None: the suite's (``run(heads=...)``)
    fused: tuple[str, ...] = ()  # compressed modes also timed through the fused kernel

    def causal_pairs(self) -> int:
        """(query, key) pairs a bottom-right causal mask keeps: query i sees n_kv - n_q + i + 1 keys."""
        offset = self.n_kv - self.n_q
        return sum(max(0, min(self.n_kv, offset + i + 1)) for i in range(self.n_q))

    def flops(self, q_heads: int, head_dim: int) -> float:
        """Two matmuls (QK^T and PV) of 2 flops per multiply-add over the kept pairs.

        For causal n_q == n_kv this is the usual count ``2 * 2 * B * H * N * N * D / 2`` (plus the diagonal).
        """
        if not self.causal:
            pairs = self.n_q * self.n_kv
        else:
            pairs = self.n_q * self.n_q / 2 if self.n_q == self.n_kv else self.causal_pairs()
        return 2 * 2 * self.batch * q_heads * pairs * head_dim


def cases(quick: bool = False) -> list[PrefillCase]:
    """Target rows first (the suite has a time budget), the other head dims last."""
    fp, k4v4 = (("fp", VANILLA_TARGET),), (("K4V4", COMPRESSED_TARGET),)
    whole_modes = ("fp", "K4V4") if quick else ("fp", "K4V4", "K4", "K2V2")
    whole_targets = fp + tuple((m, COMPRESSED_TARGET) for m in whole_modes if m != "fp")
    out = [
        PrefillCase("causal B=1 N=8192", 1, 8192, 8192, whole_modes, whole_targets, fused=("K4V4",)),
        PrefillCase("chunk 1024 onto 32768", 1, 1024, 32768, ("K4V4",), k4v4, fused=("K4V4",)),
    ]
    if quick:
        return out
    out += [
        PrefillCase("chunk 4096 onto 32768", 1, 4096, 32768, ("K4V4",), k4v4, fused=("K4V4",)),
        PrefillCase("non-causal B=1 N=8192", 1, 8192, 8192, ("fp",), fp, causal=False),
        PrefillCase("causal B=4 N=4096", 4, 4096, 4096, ("fp",), fp),
        PrefillCase("non-causal B=4 N=4096", 4, 4096, 4096, ("fp",), fp, causal=False),
    ]
    for head_dim in (64, 256):
        out += [PrefillCase(f"causal B=1 N=8192 D={head_dim}", 1, 8192, 8192, ("fp",), fp, head_dim=head_dim),
                PrefillCase(f"non-causal B=1 N=8192 D={head_dim}", 1, 8192, 8192, ("fp",), fp, causal=False,
                            head_dim=head_dim)]
    return out


def _row(case: PrefillCase, impl: str, mode: str, head_dim: int | None = None) -> dict[str, Any]:
    return {"suite": "prefill", "case": case.name, "impl": impl, "mode": mode, "B": case.batch,
            "N_q": case.n_q, "N_kv": case.n_kv, "D": head_dim or case.head_dim, "causal": case.causal, "error": None}


def run(ctx: BenchContext, selected: list[PrefillCase] | None = None,
        heads: tuple[int, int, int] = (Q_HEADS, KV_HEADS, HEAD_DIM)) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for case in selected if selected is not None else cases(ctx.quick):
        if ctx.deadline.expired():
            rows.append({**_row(case, "-", "-"), "error": "skipped: suite time budget spent"})
            continue
        ctx.log(f"prefill {case.name}")
        rows += _run_case(ctx, case, *heads)
    return {"rows": rows}


def _sdpa_mask(case: PrefillCase) -> dict[str, Any]:
    """SDPA's mask for the case: none, ``is_causal`` when square, else the lower-right bias."""
    if not case.causal:
        return {}
    if case.n_q == case.n_kv:
        return {"is_causal": True}
    from torch.nn.attention.bias import causal_lower_right

    return {"attn_mask": causal_lower_right(case.n_q, case.n_kv)}


def _run_case(ctx: BenchContext, case: PrefillCase, q_heads: int, kv_heads: int, head_dim: int) -> list[dict[str, Any]]:
    dev = ctx.device
    head_dim = case.head_dim or head_dim
    q = randn((case.batch, q_heads, case.n_q, head_dim), dev, seed=11)
    k = randn((case.batch, kv_heads, case.n_kv, head_dim), dev, seed=12)
    v = randn((case.batch, kv_heads, case.n_kv, head_dim), dev, seed=13)
    flops = case.flops(q_heads, head_dim)
    minimum = dict(case.targets)

    rows = []
    sdpa_row = _row(case, "sdpa", "fp16", head_dim)
    sdpa_ms = None
    with captured(sdpa_row):
        res = time_sdpa(q, k, v, ctx.timer, **_sdpa_mask(case))
        sdpa_ms = res.ms
        sdpa_row.update(ms=res.ms, backend=res.backend, sdpa_backends=res.per_backend, flops=flops,
                        tflops=tflops(flops, res.ms) if res.ms else None)
        if res.ms is None:
            sdpa_row["error"] = "no SDPA backend ran"
    rows.append(sdpa_row)

    for mode in case.modes:
        kb, vb = MODES.get(mode, (None, None))
        compressed = kb is not None or vb is not None
        spec = VariantSpec(Family.ATTN_PREFILL, head_dim, kb, vb, q_heads // kv_heads, case.causal, compressed)
        row = _row(case, "tqgen", mode, head_dim)
        fused_row = _row(case, "tqgen fused", mode, head_dim) if mode in case.fused else None
        if fused_row is not None:
            fused_row["error"] = "not run: the attention() row failed first"
        with captured(row):
            ck = compress(k, kb) if kb else k
            cv = compress(v, vb) if vb else v
            out = torch.empty_like(q)
            row.update(_time(ctx, case, q, ck, cv, out, flops, sdpa_ms),
                       method=prefill_method(spec, dev) if compressed else "vanilla")
            if fused_row is not None:
                fused_row["error"] = None
                with captured(fused_row), force_prefill_method("fused"):
                    fused_row.update(_time(ctx, case, q, ck, cv, out, flops, sdpa_ms), method="fused")
            if mode == "fp" and ctx.compare is not None and case.n_q == case.n_kv:
                rows.append(_compare_row(ctx, case, q, k, v, flops, sdpa_ms))
            del ck, cv, out
        target = Target("vs_sdpa", minimum[mode], f">={minimum[mode]:.0%} SDPA") if mode in minimum else None
        rows.append(with_target(row, target))
        if fused_row is not None:
            rows.append(fused_row)
    return rows


def _time(ctx: BenchContext, case: PrefillCase, q, ck, cv, out, flops: float, sdpa_ms) -> dict[str, Any]:
    """The check, then the time of ``attention()`` as the dispatcher routes it now."""
    checked = _check(case, q, ck, cv, out)
    ms = ctx.timer(lambda: tq_attention(q, ck, cv, is_causal=case.causal, out=out))
    return {**checked, "ms": ms, "flops": flops, "tflops": tflops(flops, ms), "vs_sdpa": ratio(sdpa_ms, ms)}


def _check(case: PrefillCase, q, ck, cv, out) -> dict[str, Any]:
    """One poisoned launch against SDPA (default dispatch) on the dequantised K/V."""
    import torch.nn.functional as F

    poison_(out)
    tq_attention(q, ck, cv, is_causal=case.causal, out=out)
    kd, vd = dequantize(ck, q.dtype), dequantize(cv, q.dtype)
    group = q.shape[1] // kd.shape[1]
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    expected = F.scaled_dot_product_attention(q, kd, vd, **_sdpa_mask(case))
    err = rel_l2(out, expected)
    return {"check_rel_l2": err, "check_ok": bool(err <= CHECK_REL_L2)}


def _compare_row(ctx: BenchContext, case: PrefillCase, q, k, v, flops: float, sdpa_ms) -> dict[str, Any]:
    """turboquant_vllm's vanilla Triton FlashAttention on the same fp16 inputs."""
    row = _row(case, "turboquant_vllm", "fp", q.shape[-1])
    with captured(row):
        fn = ctx.compare.triton_flash_attention
        ms = ctx.timer(lambda: fn(q, k, v, is_causal=case.causal))
        row.update(ms=ms, flops=flops, tflops=tflops(flops, ms), vs_sdpa=ratio(sdpa_ms, ms))
    return row
