"""Pure-PyTorch TurboQuant compression and attention: the oracle the Triton kernels are tested against.

compress: n = ||x|| (fp32 storage), y = (x / n) @ Pi.T, idx = Lloyd-Max bucket of every coordinate
of y, packed. decompress: n * c[idx], optionally rotated back with @ Pi (README "Formats").

Tie rule: idx = number of boundaries b with y > b (``torch.searchsorted(boundaries, y, right=False)``,
same as ``torch.bucketize`` default), so a coordinate exactly on a boundary takes the lower cell.
"""

from __future__ import annotations

import math

import torch

from .codebook import Codebook, lloyd_max_codebook
from .packing import pack, unpack
from .rotation import rotation_matrix

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _resolve(head_dim: int, bits: int, rotation, codebook, device, dtype):
    """Rotation and codebook tensors on ``device`` in ``dtype`` (defaults: seed 42, Lloyd-Max)."""
    if rotation is None:
        rotation = rotation_matrix(head_dim, device=device)
    if tuple(rotation.shape) != (head_dim, head_dim):
        raise ValueError(f"rotation must have shape ({head_dim}, {head_dim}), got {tuple(rotation.shape)}")
    if codebook is None:
        codebook = lloyd_max_codebook(head_dim, bits)
    if codebook.bits != bits:
        raise ValueError(f"codebook has {codebook.bits} bits, expected bits={bits}")
    return (
        rotation.to(device=device, dtype=dtype),
        codebook.centroids.to(device=device, dtype=dtype),
        codebook.boundaries.to(device=device, dtype=dtype),
    )


def compress(
    x: torch.Tensor,
    bits: int,
    rotation: torch.Tensor | None = None,
    codebook: Codebook | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress x [..., D] into (packed uint8 [..., packed_width], norms fp32 [...]).

    Computed in fp32 (fp64 when x is fp64). Zero vectors get norm 0 and decode to exact zeros.
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must be a float16/bfloat16/float32/float64 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("x must have a last (head) dimension")
    head_dim = x.shape[-1]
    dtype = _compute_dtype(x.dtype)
    pi, _, boundaries = _resolve(head_dim, bits, rotation, codebook, x.device, dtype)
    values = x.to(dtype)
    norms = torch.linalg.vector_norm(values, dim=-1)
    unit = values / norms.clamp_min(torch.finfo(dtype).tiny).unsqueeze(-1)
    rotated = unit @ pi.T
    indices = torch.searchsorted(boundaries, rotated.contiguous(), right=False)
    return pack(indices.to(torch.uint8), bits), norms.to(torch.float32)


def decompress(
    packed: torch.Tensor,
    norms: torch.Tensor,
    bits: int,
    head_dim: int,
    rotation: torch.Tensor | None = None,
    codebook: Codebook | None = None,
    rotated: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reconstruct [..., head_dim] from ``compress`` output: n * c[idx], then @ Pi unless ``rotated``.

    ``norms`` may be [...] or [..., 1]. ``rotated=True`` stays in the rotated space (what the
    attention kernels work in).
    """
    batch = tuple(packed.shape[:-1])
    if norms.dim() == len(batch) + 1 and norms.shape[-1] == 1:
        norms = norms.squeeze(-1)
    if tuple(norms.shape) != batch:
        raise ValueError(f"norms must have shape {batch} or {batch + (1,)}, got {tuple(norms.shape)}")
    compute = _compute_dtype(dtype)
    pi, centroids, _ = _resolve(head_dim, bits, rotation, codebook, packed.device, compute)
    indices = unpack(packed, bits, head_dim).long()
    values = centroids[indices] * norms.to(compute).unsqueeze(-1)
    if not rotated:
        values = values @ pi
    return values.to(dtype)


def _check_attention_shapes(q, k, v, mask) -> tuple[int, int, int, int, int]:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor [B, H, N, D], got {getattr(tensor, 'shape', type(tensor))}")
    batch, q_heads, q_len, head_dim = q.shape
    if k.shape[0] != batch or k.shape[-1] != head_dim:
        raise ValueError(f"k must be [B={batch}, Hkv, Nkv, D={head_dim}], got {tuple(k.shape)}")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if tuple(v.shape[:3]) != (batch, kv_heads, kv_len):
        raise ValueError(f"v must be [{batch}, {kv_heads}, {kv_len}, Dv] like k, got {tuple(v.shape)}")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"k heads ({kv_heads}) must divide q heads ({q_heads})")
    if mask is not None:
        target = (batch, q_heads, q_len, kv_len)
        try:
            broadcast = torch.broadcast_shapes(tuple(mask.shape), target)
        except RuntimeError:
            broadcast = None
        if broadcast != target:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {target}")
    return batch, q_heads, q_len, kv_heads, kv_len


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Naive float64 softmax attention with GQA, bottom-right causal masking and optional mask.

    q [B, Hq, Nq, D], k/v [B, Hkv, Nkv, D]; query head h uses kv head h // (Hq // Hkv).
    Causal: query i sees key j iff j <= i + Nkv - Nq. ``mask`` broadcasts to [B, Hq, Nq, Nkv]:
    bool (True = attend) or additive float. A row with no visible key outputs 0.
    """
    _, q_heads, q_len, kv_heads, kv_len = _check_attention_shapes(q, k, v, mask)
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    keys = k.to(torch.float64).repeat_interleave(group, dim=1)
    values = v.to(torch.float64).repeat_interleave(group, dim=1)
    scores = (q.to(torch.float64) @ keys.transpose(-1, -2)) * scale
    if causal:
        rows = torch.arange(q_len, device=q.device).unsqueeze(-1)
        cols = torch.arange(kv_len, device=q.device)
        scores = scores.masked_fill(cols > rows + kv_len - q_len, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask.to(q.device), float("-inf"))
        else:
            scores = scores + mask.to(device=q.device, dtype=torch.float64)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    denominator = weights.sum(dim=-1, keepdim=True)
    out = (weights @ values) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return out.to(dtype)
