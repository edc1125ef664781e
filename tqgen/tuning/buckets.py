"""Shape buckets: the tune cache keys a config by variant and bucket, never by exact KV length.

A decode step's KV length changes every token; keying a config on it would re-tune
(or miss the cache) on every generated token.  Buckets are coarse on purpose.
"""

from __future__ import annotations

from tqgen.spec import DECODE_MAX_Q, Family, VariantSpec


def _nq_bucket(n_q: int) -> str:
    if n_q <= 1:
        return "q1"
    if n_q <= DECODE_MAX_Q:
        return f"q2-{DECODE_MAX_Q}"
    if n_q <= 128:
        return f"q{DECODE_MAX_Q + 1}-128"
    return "q129+"


def _pow2_bucket(prefix: str, n: int) -> str:
    """Round up to a power of two, capped at 2**17 (131072)."""
    p = 1
    while p < n and p < (1 << 17):
        p <<= 1
    return f"{prefix}{p}"


def shape_bucket(spec: VariantSpec, n_q: int = 1, n_kv: int = 1, batch_heads: int = 1) -> str:
    """The bucket name for a launch of ``spec`` on the given problem size."""
    fam = spec.family
    if fam is Family.ATTN_DECODE:
        return f"{_nq_bucket(n_q)}_{_pow2_bucket('kv', n_kv)}_{_pow2_bucket('bh', batch_heads)}"
    if fam is Family.ATTN_PREFILL:
        return f"{_nq_bucket(n_q)}_{_pow2_bucket('kv', n_kv)}"
    return "any"
