"""Compress suite: norm + rotate + quantise + pack of fp16 K/V into a preallocated cache buffer.

Memory-bound: the bytes are the fp16 input read plus the codes and fp32 norms written,
over the time, as a fraction of the copy bandwidth.  Target: 4-bit, 65536
tokens x 8 heads, >= 50% of copy bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqgen.bench.common import (
    BenchContext,
    Target,
    captured,
    codec,
    frac,
    operand_bytes,
    randn,
    tbps,
    with_target,
)
from tqgen.bench.decode import HEAD_DIM, KV_HEADS

CODE_MISMATCH_MAX = 1e-3  # fraction of codes allowed to differ from the reference (boundary ties)


@dataclass(frozen=True)
class CompressCase:
    tokens: int
    heads: int
    bits: int

    @property
    def name(self) -> str:
        return f"{self.tokens} tok x {self.heads} heads"


def cases(quick: bool = False) -> list[CompressCase]:
    bits = (4,) if quick else (4, 3, 2)
    return [CompressCase(65536, KV_HEADS, b) for b in bits]


def target(case: CompressCase) -> Target | None:
    return Target("frac_copy", 0.50, ">=50% copy bw") if case.bits == 4 else None


def run(ctx: BenchContext, selected: list[CompressCase] | None = None, head_dim: int = HEAD_DIM) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for case in selected if selected is not None else cases(ctx.quick):
        row = {"suite": "compress", "case": case.name, "impl": "tqgen", "mode": f"{case.bits}-bit",
               "B": 1, "N_kv": case.tokens, "error": None}
        if ctx.deadline.expired():
            rows.append({**row, "error": "skipped: suite time budget spent"})
            continue
        ctx.log(f"compress {case.name} {case.bits}-bit")
        with captured(row):
            tq = codec(head_dim, case.bits)
            x = randn((1, case.heads, case.tokens, head_dim), ctx.device, seed=21)
            buf = tq.empty(1, case.heads, case.tokens, ctx.device)
            row.update(_check(x, tq, buf, case.bits))
            ms = ctx.timer(lambda: tq.compress(x, out=buf, start=0))
            nbytes = operand_bytes(x) + operand_bytes(buf)
            row.update(ms=ms, bytes=nbytes, tbps=tbps(nbytes, ms))
            row["frac_copy"] = frac(row["tbps"], ctx.copy_tbps)
        rows.append(with_target(row, target(case)))
    return {"rows": rows}


def _check(x, tq, buf, bits: int) -> dict[str, Any]:
    """Codes against the PyTorch reference (a few boundary ties may round differently)."""
    from tqgen.quant import compress as reference_compress

    buf.packed.fill_(0xFF)
    buf.norms.fill_(float("nan"))
    tq.compress(x, out=buf, start=0)
    packed, norms = reference_compress(x, bits, rotation=buf.rotation)
    mismatch = float((buf.packed != packed).float().mean())
    norm_err = float(((buf.norms - norms).abs() / norms.abs().clamp_min(1e-30)).max())
    ok = mismatch <= CODE_MISMATCH_MAX and norm_err <= 1e-3
    return {"check_code_mismatch": mismatch, "check_norm_rel_err": norm_err, "check_ok": bool(ok)}
