"""Decode suite: one query token against a long compressed cache, against torch SDPA fp16.

Decode is memory-bound, so the number that matters is the bytes a kernel must read
(codes + norms of K and V, or fp16 K/V for SDPA, plus q and out) over its time, as a
fraction of the device copy bandwidth measured in the same run.  Kernels are compared by device
time (both sides replayed in a CUDA graph); eager times are recorded beside it.  Targets:

* K+V 4-bit at the three long shapes: >= 2x SDPA; K+V 2-bit >= 3x, 3-bit >= 1.7x, K-only 4-bit >= 1.3x;
* K+V 4-bit at B=1, N=4096 and at the other GQA groups / head dims: no slower than SDPA.

B=1 runs at several context lengths feed the time-against-length plot.  One case is also
captured in a CUDA graph (output buffer passed) and replayed on fresh query values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tqgen.bench.common import (
    BenchContext,
    Target,
    captured,
    compress,
    dequantize,
    frac,
    host_loop_ms,
    operand_bytes,
    randn,
    ratio,
    rel_l2,
    short_error,
    sync,
    tbps,
    time_sdpa,
    tq_attention,
    with_target,
)
from tqgen.testing import poison_

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
MODES: dict[str, tuple[int | None, int | None]] = {
    "K4V4": (4, 4),
    "K3V3": (3, 3),
    "K2V2": (2, 2),
    "K4": (4, None),  # K-only 4-bit, fp16 V
}
LONG_SHAPES = ((1, 131072), (8, 32768), (32, 8192))
SHORT_SHAPE = (1, 4096)
SWEEP_LENGTHS = (8192, 16384, 32768, 65536)  # B=1, with 4096 and 131072: the plot
GRAPH_SHAPE = SHORT_SHAPE
CHECK_REL_L2 = 2e-2  # ours vs SDPA on the dequantised K/V (fp16 rounding only)


# GQA groups and head dims beside the default (32 query / 8 KV heads, D=128), at B=8 N=32768
HEAD_SHAPES = ((8, 8, 128), (16, 8, 128), (64, 8, 128), (32, 8, 64), (32, 8, 256))


@dataclass(frozen=True)
class DecodeCase:
    batch: int
    n_kv: int
    modes: tuple[str, ...]
    heads: tuple[int, int, int] = (Q_HEADS, KV_HEADS, HEAD_DIM)  # query heads, KV heads, head_dim

    @property
    def name(self) -> str:
        extra = "" if self.heads == (Q_HEADS, KV_HEADS, HEAD_DIM) else " Hq={} Hkv={} D={}".format(*self.heads)
        return f"B={self.batch} N={self.n_kv}{extra}"


def cases(quick: bool = False) -> list[DecodeCase]:
    """README's Performance shapes; without ``quick`` also the GQA/head-dim cases and the B=1 sweep for the plot."""
    out = [DecodeCase(b, n, tuple(MODES)) for b, n in LONG_SHAPES]
    out.append(DecodeCase(*SHORT_SHAPE, tuple(MODES) if not quick else ("K4V4",)))
    if not quick:
        out += [DecodeCase(8, 32768, ("K4V4",), heads) for heads in HEAD_SHAPES]
        out += [DecodeCase(1, n, ("K4V4", "K3V3", "K2V2")) for n in SWEEP_LENGTHS]
    return out


# Device-time speed-ups over SDPA fp16 (both replayed in CUDA graphs) that each mode must reach
# at the long shapes; every other case must be no slower than SDPA.
SPEEDUP_TARGETS = {"K4V4": 2.0, "K2V2": 3.0, "K3V3": 1.7, "K4": 1.3}


def target(mode: str, batch: int, n_kv: int, heads: tuple[int, int, int] = (Q_HEADS, KV_HEADS, HEAD_DIM)) -> Target | None:
    default_heads = heads == (Q_HEADS, KV_HEADS, HEAD_DIM)
    if (batch, n_kv) in LONG_SHAPES and default_heads:
        x = SPEEDUP_TARGETS[mode]
        return Target("vs_sdpa_graph", x, f">={x}x SDPA (device time)")
    if mode == "K4V4" and ((batch, n_kv) == SHORT_SHAPE or not default_heads):
        return Target("vs_sdpa_graph", 1.0, ">=1.0x SDPA (device time)")
    return None


def _row(case: DecodeCase, impl: str, mode: str) -> dict[str, Any]:
    q_heads, kv_heads, head_dim = case.heads
    return {"suite": "decode", "case": case.name, "impl": impl, "mode": mode,
            "B": case.batch, "N_q": 1, "N_kv": case.n_kv, "H_q": q_heads, "H_kv": kv_heads,
            "head_dim": head_dim, "error": None}


def capture(fn) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, after warm-up calls (compile, allocate, pick backends)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(ctx: BenchContext, fn) -> float | None:
    """Device time of ``fn`` replayed in a CUDA graph (host launch cost removed), or None off-GPU."""
    return ctx.timer(capture(fn).replay) if ctx.on_gpu else None


def run(ctx: BenchContext, selected: list[DecodeCase] | None = None,
        heads: tuple[int, int, int] = (Q_HEADS, KV_HEADS, HEAD_DIM)) -> dict[str, Any]:
    """Time every case; returns ``{"rows": [...], "cuda_graph": {...}}``."""
    q_heads, kv_heads, head_dim = heads
    rows: list[dict[str, Any]] = []
    graph: dict[str, Any] = {"checked": False}
    for case in selected if selected is not None else cases(ctx.quick):
        if ctx.deadline.expired():
            rows.append({**_row(case, "-", "-"), "error": "skipped: suite time budget spent"})
            continue
        ctx.log(f"decode {case.name}")
        case_heads = case.heads if heads == (Q_HEADS, KV_HEADS, HEAD_DIM) else heads  # tests pass tiny heads
        rows += _run_case(ctx, case, *case_heads, graph)
    return {"rows": rows, "cuda_graph": graph}


def _run_case(ctx: BenchContext, case: DecodeCase, q_heads: int, kv_heads: int, head_dim: int,
              graph: dict[str, Any]) -> list[dict[str, Any]]:
    dev = ctx.device
    b, n = case.batch, case.n_kv
    q = randn((b, q_heads, 1, head_dim), dev, seed=1)
    k = randn((b, kv_heads, n, head_dim), dev, seed=2)
    v = randn((b, kv_heads, n, head_dim), dev, seed=3)
    io_bytes = 2 * q.numel() * q.element_size()  # q read + out written

    rows = []
    sdpa_row = _row(case, "sdpa", "fp16")
    sdpa_ms = None
    with captured(sdpa_row):
        res = time_sdpa(q, k, v, ctx.timer)
        sdpa_ms = res.ms
        nbytes = operand_bytes(k) + operand_bytes(v) + io_bytes
        sdpa_row.update(ms=res.ms, backend=res.backend, sdpa_backends=res.per_backend, bytes=nbytes,
                        tbps=tbps(nbytes, res.ms) if res.ms else None)
        sdpa_row["frac_copy"] = frac(sdpa_row["tbps"], ctx.copy_tbps)
        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        if res.ms is None:
            sdpa_row["error"] = "no SDPA backend ran"
        else:
            sdpa_row["graph_ms"] = graph_ms(ctx, sdpa)
        if (b, n) == SHORT_SHAPE and ctx.on_gpu:
            sdpa_row["host_loop_ms"] = host_loop_ms(sdpa)
    rows.append(sdpa_row)

    for mode in case.modes:
        kb, vb = MODES[mode]
        row = _row(case, "tqgen", mode)
        with captured(row):
            ck = compress(k, kb) if kb else k
            cv = compress(v, vb) if vb else v
            out = torch.empty_like(q)
            row.update(_check(q, ck, cv, out))
            ms = ctx.timer(lambda: tq_attention(q, ck, cv, out=out))
            nbytes = operand_bytes(ck) + operand_bytes(cv) + io_bytes
            row.update(ms=ms, bytes=nbytes, tbps=tbps(nbytes, ms))
            row.update(frac_copy=frac(row["tbps"], ctx.copy_tbps), vs_sdpa=ratio(sdpa_ms, ms))
            row["graph_ms"] = graph_ms(ctx, lambda: tq_attention(q, ck, cv, out=out))
            row["vs_sdpa_graph"] = ratio(sdpa_row.get("graph_ms"), row["graph_ms"])
            row["frac_copy_graph"] = frac(tbps(nbytes, row["graph_ms"]) if row["graph_ms"] else None, ctx.copy_tbps)
            if mode == "K4V4" and ctx.compare is not None:
                rows.append(_compare_row(ctx, case, q, ck, cv, io_bytes, sdpa_ms))
            if (b, n) == SHORT_SHAPE and ctx.on_gpu:  # launch overhead included (see host_loop_ms)
                row["host_loop_ms"] = host_loop_ms(lambda: tq_attention(q, ck, cv, out=out))
            if mode == "K4V4" and (b, n) == GRAPH_SHAPE and ctx.on_gpu and ctx.cuda_graphs:
                graph.update(cuda_graph_check(ctx, q, ck, cv))
            del ck, cv, out
        rows.append(with_target(row, target(mode, b, n, case.heads)))
    del q, k, v
    return rows


def _check(q, ck, cv, out) -> dict[str, Any]:
    """One poisoned launch compared with SDPA on the dequantised K/V."""
    poison_(out)
    tq_attention(q, ck, cv, out=out)
    kd, vd = dequantize(ck, q.dtype), dequantize(cv, q.dtype)
    expected = F.scaled_dot_product_attention(q, kd, vd, enable_gqa=q.shape[1] != kd.shape[1])
    err = rel_l2(out, expected)
    return {"check_rel_l2": err, "check_ok": bool(err <= CHECK_REL_L2)}


def cuda_graph_check(ctx: BenchContext, q, ck, cv) -> dict[str, Any]:
    """Capture the decode call with its output buffer passed, replay on new query values,
    compare with an eager call, and time the replay (launch overhead removed)."""
    result: dict[str, Any] = {"checked": True, "shape": f"B={q.shape[0]} N={ck.shape[2]} K4V4"}
    try:
        out = torch.empty_like(q)
        graph = capture(lambda: tq_attention(q, ck, cv, out=out))
        q.copy_(torch.randn_like(q))  # the replay must read the buffer, not a captured copy
        poison_(out)
        graph.replay()
        sync()
        expected = tq_attention(q, ck, cv)
        err = rel_l2(out, expected)
        result.update(capturable=True, replay_rel_l2=err, replay_ok=bool(err < 1e-3))
        result["replay_ms"] = ctx.timer(graph.replay)
        result["eager_ms"] = ctx.timer(lambda: tq_attention(q, ck, cv, out=out))
    except Exception as exc:  # noqa: BLE001 - record why capture failed
        result.update(capturable=False, error=short_error(exc))
    return result


def _compare_row(ctx: BenchContext, case: DecodeCase, q, ck, cv, io_bytes: int, sdpa_ms) -> dict[str, Any]:
    """turboquant_vllm's fused TQ4 K+V kernel on the same codes (the same code layout: README "Formats")."""
    row = _row(case, "turboquant_vllm", "K4V4")
    with captured(row):
        fn = ctx.compare.triton_flash_attention_tq4_kv
        args = (q, ck.packed, ck.norms, cv.packed, cv.norms, ck.centroids, ck.rotation)
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - older releases take [B, H, N, 1] norms
            args = (q, ck.packed, ck.norms.unsqueeze(-1), cv.packed, cv.norms.unsqueeze(-1), ck.centroids, ck.rotation)
            fn(*args)
        sync()
        ms = ctx.timer(lambda: fn(*args))
        nbytes = operand_bytes(ck) + operand_bytes(cv) + io_bytes
        row.update(ms=ms, bytes=nbytes, tbps=tbps(nbytes, ms))
        row.update(frac_copy=frac(row["tbps"], ctx.copy_tbps), vs_sdpa=ratio(sdpa_ms, ms))
    return row
