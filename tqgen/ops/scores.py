"""Launcher of the legacy scores-only kernel (``tqgen.scores.fused_qk_scores``): Q @ K^T of
pre-rotated queries against packed keys, all query positions in one launch."""

from __future__ import annotations

import torch

from tqgen.codegen.loader import kernel
from tqgen.ops import cdiv
from tqgen.spec import VariantSpec


def scores(
    spec: VariantSpec,
    config: dict[str, int],
    q_rotated: torch.Tensor,
    packed: torch.Tensor,
    norms: torch.Tensor,
    centroids: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> torch.Tensor:
    """fp32 scores ``out`` [B, H_q, N_q, N_kv] of ``spec`` (a scores variant; its group maps query
    head h to KV head h // group) with ``config``.

    Inputs are checked by the caller (:func:`tqgen.scores.fused_qk_scores`): unit last-dim strides
    for ``q_rotated``, ``packed`` and ``out``, norms ``[B, H_kv, N_kv]``.  Returns ``out``.
    """
    batch, _, n_q, _ = q_rotated.shape
    n_kv_heads, n_kv = packed.shape[1], packed.shape[2]
    group = spec.group
    centroids = centroids.to(torch.float32).contiguous()
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    # Rows are (query position, head of the group) pairs: N_q * group of them per KV head.
    grid = (cdiv(n_q * group, block_m), cdiv(n_kv, block_n), batch * n_kv_heads)
    kernel(spec)[grid](
        q_rotated, q_rotated.stride(0), q_rotated.stride(1), q_rotated.stride(2),
        packed, packed.stride(0), packed.stride(1), packed.stride(2),
        norms, norms.stride(0), norms.stride(1), norms.stride(2),
        centroids,
        out, out.stride(0), out.stride(1), out.stride(2),
        n_q, n_kv, n_kv_heads, float(scale),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return out
