"""Launcher of the compress kernel: norm, rotate, quantise and pack into a cache buffer."""

from __future__ import annotations

import torch

from tqgen.ops import cdiv, derived
from tqgen.ops.attention import sm_count
from tqgen.ops.launch import kernel
from tqgen.spec import VariantSpec


def rotation_halves(rotation: torch.Tensor) -> torch.Tensor:
    """Pi as two fp16 terms [2, D, D], Pi = hi + lo to ~2^-22: the kernel rotates on fp16 tensor
    cores with fp32 accuracy (derived once per rotation tensor)."""

    def split() -> torch.Tensor:
        pi = rotation.detach().to(torch.float32)
        hi = pi.to(torch.float16)
        return torch.stack((hi, (pi - hi.to(torch.float32)).to(torch.float16))).contiguous()

    return derived("rotation_halves", rotation, None, split)


def compress(
    spec: VariantSpec,
    config: dict[str, int],
    x: torch.Tensor,
    rotation: torch.Tensor,
    boundaries: torch.Tensor,
    packed: torch.Tensor,
    norms: torch.Tensor,
    start: int,
) -> None:
    """Compress ``x`` [B, H, N, D] into ``packed`` [B, H, capacity, W] / ``norms`` [B, H, capacity]
    at token positions [start, start + N): one launch of ``spec`` (a compress variant) with ``config``.

    Inputs are checked by the caller (:func:`tqgen.turboquant.compress_into`): unit last-dim
    strides for ``x`` and ``packed``, norms ``[B, H, capacity]``.
    """
    batch, heads, n_tokens, _ = x.shape
    rotation = rotation_halves(rotation)
    boundaries = boundaries.to(torch.float32).contiguous()
    block_t = config["BLOCK_T"]
    tiles = cdiv(n_tokens, block_t) * batch * heads
    grid = (min(tiles, config["PROGRAMS_PER_SM"] * sm_count(x.device)),)  # persistent programs
    kernel(spec)[grid](
        x, x.stride(0), x.stride(1), x.stride(2),
        rotation,
        boundaries,
        packed, packed.stride(0), packed.stride(1), packed.stride(2),
        norms, norms.stride(0), norms.stride(1), norms.stride(2),
        n_tokens, heads, batch, start,
        BLOCK_T=block_t,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )

