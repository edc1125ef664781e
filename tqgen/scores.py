"""``fused_qk_scores``: the legacy Q @ K^T-only kernel of the seed page, for any code width.

Kept for callers of ``turboquant_vllm.triton.fused_qk_scores``.  Materialising the
scores (rather than fusing the softmax, see ``tqgen``'s attention dispatchers)
costs accuracy and bandwidth; this one at least launches once for all query
positions and reads every key tile once per GQA group.  This module checks the
arguments and looks up the launch config; :mod:`tqgen.ops.scores` launches.
"""

from __future__ import annotations

import math

import torch

from tqgen.ops.scores import scores
from tqgen.quant.packing import packed_width
from tqgen.spec import Family, VariantSpec
from tqgen.tuning import launch_config
from tqgen.validation import (
    bits_of_codebook,
    check_gqa_group,
    check_norms,
    check_same_device,
    check_shape,
    check_tensor,
    check_vectors,
    forward_only,
    wants_grad,
)


def fused_qk_scores(
    q_rotated: torch.Tensor,
    packed_indices: torch.Tensor,
    norms: torch.Tensor,
    centroids: torch.Tensor,
    scale: float,
    *,
    n_q_heads: int,
    n_kv_heads: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of pre-rotated queries against packed keys, fp32 [B, n_q_heads, N_q, N_kv].

    Args:
        q_rotated: [B, n_q_heads, N_q, D] fp16/bf16/fp32, already rotated (q @ Pi.T);
            any strides except along D.
        packed_indices: uint8 [B, n_kv_heads, N_kv, packed_width(D, bits)].
        norms: fp32 key norms [B, n_kv_heads, N_kv] or [..., 1].
        centroids: the codebook, [2**bits] (its length gives ``bits``: 4, 8 or 16 levels).
        scale: softmax scale (typically 1/sqrt(D)).
        n_q_heads, n_kv_heads: query head h reads KV head h // (n_q_heads // n_kv_heads).
        out: optional fp32 output buffer (contiguous last dim); allocated if None.

    score[b, h, i, n] = scale * norm[n] * <q_rotated[b, h, i], c[idx[n]]>, computed in
    one launch for all query positions.  There is no backward pass: with inputs that require
    grad the scores carry a grad_fn whose backward raises.
    """
    if wants_grad(q_rotated, norms, centroids):
        return forward_only("tqgen.fused_qk_scores", lambda: fused_qk_scores(
            q_rotated, packed_indices, norms, centroids, scale, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads),
            q_rotated, norms, centroids, out=out)
    q_rotated = check_vectors("q_rotated", q_rotated)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number (the softmax scale), got {scale!r}") from None
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite (the softmax scale, typically 1/sqrt(D)), got {scale}")
    batch, q_heads, n_q, head_dim = q_rotated.shape
    bits = bits_of_codebook("centroids", check_tensor("centroids", centroids, ndim=1))
    group = _check_heads(q_heads, n_q_heads, n_kv_heads)
    check_tensor("packed_indices", packed_indices, ndim=4, dtypes=(torch.uint8,))
    width = packed_width(head_dim, bits)
    if packed_indices.shape[-1] != width:
        raise ValueError(
            f"packed_indices has {packed_indices.shape[-1]} bytes per key but {bits}-bit codes "
            f"(centroids has {centroids.numel()} levels) of head_dim {head_dim} take {width}"
        )
    n_kv = packed_indices.shape[2]
    check_shape("packed_indices", packed_indices, (batch, n_kv_heads, n_kv, width), "[B, n_kv_heads, N_kv, packed width]")
    norms = check_norms("norms", norms, (batch, n_kv_heads, n_kv))
    if packed_indices.stride(-1) != 1:
        raise ValueError(f"packed_indices must be contiguous in its last dim, got strides {packed_indices.stride()}")
    if out is None:
        out = torch.empty((batch, q_heads, n_q, n_kv), dtype=torch.float32, device=q_rotated.device)
    else:
        check_tensor("out", out, ndim=4, dtypes=(torch.float32,))
        check_shape("out", out, (batch, q_heads, n_q, n_kv), "[B, n_q_heads, N_q, N_kv]")
        if out.stride(-1) != 1:
            raise ValueError(f"out must be contiguous in its last dim, got strides {out.stride()}")
    device = check_same_device(
        q_rotated=q_rotated, packed_indices=packed_indices, norms=norms, centroids=centroids, out=out
    )
    if out.numel() == 0:
        return out
    spec = VariantSpec(Family.SCORES, head_dim, bits, group=group)
    return scores(spec, launch_config(spec, device), q_rotated, packed_indices, norms, centroids, scale, out)


def _check_heads(q_heads: int, n_q_heads: int, n_kv_heads: int) -> int:
    """The GQA group of ``n_q_heads`` / ``n_kv_heads`` (positive ints, ``n_q_heads`` = q's heads)."""
    for name, value in (("n_q_heads", n_q_heads), ("n_kv_heads", n_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if q_heads != n_q_heads:
        raise ValueError(f"q_rotated has {q_heads} heads (dim 1) but n_q_heads={n_q_heads}")
    return check_gqa_group(n_q_heads, n_kv_heads, "n_q_heads", "n_kv_heads")
