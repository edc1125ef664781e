"""Prefill suite: causal attention over a whole prompt, and a chunk of queries onto a cache.

Prefill is compute-bound, so results are TFLOP/s (causal: half the score matrix,
``2 * 2 * B * H * N * N * D / 2``) and the ratio to torch SDPA fp16 in the same run.
Targets, B=1, N=8192: vanilla fp16 >= 85% of SDPA, fused K+V 4-bit >= 70%;
1024 queries onto a 32768-token 4-bit cache >= 70% of SDPA given the bottom-right
causal bias (``torch.nn.attention.bias.causal_lower_right``).
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
from tqgen.testing import poison_

CHECK_REL_L2 = 2e-2


@dataclass(frozen=True)
class PrefillCase:
    name: str
    batch: int
    n_q: int
    n_kv: int
    modes: tuple[str, ...]  # "fp" = uncompressed K/V, else a key of decode.MODES
    targets: tuple[tuple[str, float], ...] = ()  # (mode, minimum ratio to SDPA)

    def causal_pairs(self) -> int:
        """(query, key) pairs a bottom-right causal mask keeps: query i sees n_kv - n_q + i + 1 keys."""
        offset = self.n_kv - self.n_q
        return sum(max(0, min(self.n_kv, offset + i + 1)) for i in range(self.n_q))

    def flops(self, q_heads: int, head_dim: int) -> float:
        """Two matmuls (QK^T and PV) of 2 flops per multiply-add over the kept pairs.

        For n_q == n_kv this is the usual causal count ``2 * 2 * B * H * N * N * D / 2`` (plus the diagonal).
        """
        pairs = self.n_q * self.n_q / 2 if self.n_q == self.n_kv else self.causal_pairs()
        return 2 * 2 * self.batch * q_heads * pairs * head_dim


def cases(quick: bool = False) -> list[PrefillCase]:
    full = PrefillCase("causal B=1 N=8192", 1, 8192, 8192, ("fp", "K4V4") if quick else ("fp", "K4V4", "K4", "K2V2"),
                       (("fp", 0.85), ("K4V4", 0.70)))
    chunk = PrefillCase("chunk 1024 onto 32768", 1, 1024, 32768, ("K4V4",), (("K4V4", 0.70),))
    return [full, chunk]


def _row(case: PrefillCase, impl: str, mode: str) -> dict[str, Any]:
    return {"suite": "prefill", "case": case.name, "impl": impl, "mode": mode,
            "B": case.batch, "N_q": case.n_q, "N_kv": case.n_kv, "error": None}


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
    """SDPA's causal setting for the case: ``is_causal`` when square, else the lower-right bias."""
    if case.n_q == case.n_kv:
        return {"is_causal": True}
    from torch.nn.attention.bias import causal_lower_right

    return {"attn_mask": causal_lower_right(case.n_q, case.n_kv)}


def _run_case(ctx: BenchContext, case: PrefillCase, q_heads: int, kv_heads: int, head_dim: int) -> list[dict[str, Any]]:
    dev = ctx.device
    q = randn((case.batch, q_heads, case.n_q, head_dim), dev, seed=11)
    k = randn((case.batch, kv_heads, case.n_kv, head_dim), dev, seed=12)
    v = randn((case.batch, kv_heads, case.n_kv, head_dim), dev, seed=13)
    flops = case.flops(q_heads, head_dim)
    minimum = dict(case.targets)

    rows = []
    sdpa_row = _row(case, "sdpa", "fp16")
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
        row = _row(case, "tqgen", mode)
        with captured(row):
            ck = compress(k, kb) if kb else k
            cv = compress(v, vb) if vb else v
            out = torch.empty_like(q)
            row.update(_check(case, q, ck, cv, out))
            ms = ctx.timer(lambda: tq_attention(q, ck, cv, is_causal=True, out=out))
            row.update(ms=ms, flops=flops, tflops=tflops(flops, ms), vs_sdpa=ratio(sdpa_ms, ms))
            if mode == "fp" and ctx.compare is not None and case.n_q == case.n_kv:
                rows.append(_compare_row(ctx, case, q, k, v, flops, sdpa_ms))
            del ck, cv, out
        target = Target("vs_sdpa", minimum[mode], f">={minimum[mode]:.0%} SDPA") if mode in minimum else None
        rows.append(with_target(row, target))
    return rows


def _check(case: PrefillCase, q, ck, cv, out) -> dict[str, Any]:
    """One poisoned launch against SDPA (default dispatch) on the dequantised K/V."""
    import torch.nn.functional as F

    poison_(out)
    tq_attention(q, ck, cv, is_causal=True, out=out)
    kd, vd = dequantize(ck, q.dtype), dequantize(cv, q.dtype)
    group = q.shape[1] // kd.shape[1]
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    expected = F.scaled_dot_product_attention(q, kd, vd, **_sdpa_mask(case))
    err = rel_l2(out, expected)
    return {"check_rel_l2": err, "check_ok": bool(err <= CHECK_REL_L2)}


def _compare_row(ctx: BenchContext, case: PrefillCase, q, k, v, flops: float, sdpa_ms) -> dict[str, Any]:
    """turboquant_vllm's vanilla Triton FlashAttention on the same fp16 inputs."""
    row = _row(case, "turboquant_vllm", "fp")
    with captured(row):
        fn = ctx.compare.triton_flash_attention
        ms = ctx.timer(lambda: fn(q, k, v, is_causal=True))
        row.update(ms=ms, flops=flops, tflops=tflops(flops, ms), vs_sdpa=ratio(sdpa_ms, ms))
    return row
