"""Launcher of the compress kernel: norm, rotate, quantise and pack into a cache buffer."""

from __future__ import annotations

import torch

from tqgen.ops.launch import kernel
from tqgen.quant.packing import packed_width
from tqgen.spec import Family, VariantSpec
from tqgen.ops import cdiv, derived
from tqgen.ops.attention import sm_count
from tqgen.tuning import launch_config
from tqgen.validation import (
    FLOAT_DTYPES,
    check_bits,
    check_head_dim,
    check_last_dim_contiguous,
    check_norms,
    check_same_device,
    check_shape,
    check_tensor,
)


def rotation_halves(rotation: torch.Tensor) -> torch.Tensor:
    """Pi as two fp16 terms [2, D, D], Pi = hi + lo to ~2^-22: the kernel rotates on fp16 tensor
    cores with fp32 accuracy (derived once per rotation tensor)."""

    def split() -> torch.Tensor:
        pi = rotation.detach().to(torch.float32)
        hi = pi.to(torch.float16)
        return torch.stack((hi, (pi - hi.to(torch.float32)).to(torch.float16))).contiguous()

    return derived("rotation_halves", rotation, None, split)


def compress_into(
    x: torch.Tensor,
    rotation: torch.Tensor,
    boundaries: torch.Tensor,
    packed: torch.Tensor,
    norms: torch.Tensor,
    *,
    bits: int,
    start: int = 0,
) -> None:
    """Compress ``x`` [B, H, N, D] into ``packed``/``norms`` at token positions [start, start + N).

    ``packed`` is uint8 [B, H, capacity, packed_width(D, bits)] and ``norms`` fp32
    [B, H, capacity] (or [..., 1]); both may be strided views (e.g. one layer of
    a larger cache) as long as the packed bytes of a token are contiguous.  The
    rest of the buffers is left untouched.  One kernel launch.
    """
    check_bits("bits", bits)
    check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES)
    batch, heads, n_tokens, head_dim = x.shape
    check_head_dim("x", head_dim)
    check_tensor("rotation", rotation, ndim=2, dtypes=FLOAT_DTYPES)
    check_shape("rotation", rotation, (head_dim, head_dim), "[D, D]")
    levels = 1 << bits
    check_tensor("boundaries", boundaries, ndim=1, dtypes=FLOAT_DTYPES)
    check_shape("boundaries", boundaries, (levels - 1,), "[2**bits - 1]")
    check_tensor("packed", packed, ndim=4, dtypes=(torch.uint8,))
    width = packed_width(head_dim, bits)
    check_shape("packed", packed, (batch, heads, None, width), f"[B, H, capacity, packed_width(D={head_dim}, bits={bits})]")
    norms = check_norms("norms", norms, tuple(packed.shape[:3]))
    if packed.stride(-1) != 1:
        raise ValueError(f"packed must be contiguous in its last dim (the bytes of one token), got strides {packed.stride()}")
    capacity = packed.shape[2]
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if start + n_tokens > capacity:
        raise ValueError(
            f"start + N = {start} + {n_tokens} = {start + n_tokens} exceeds the buffer capacity {capacity} "
            "(packed.shape[2]); grow the buffer first"
        )
    device = check_same_device(x=x, rotation=rotation, boundaries=boundaries, packed=packed, norms=norms)
    if n_tokens == 0 or batch * heads == 0:
        return

    x = check_last_dim_contiguous("x", x)
    rotation = rotation_halves(rotation)
    boundaries = boundaries.to(torch.float32).contiguous()
    spec = VariantSpec(Family.COMPRESS, head_dim, bits, rotate=True)
    config = launch_config(spec, device)
    block_t = config["BLOCK_T"]
    tiles = cdiv(n_tokens, block_t) * batch * heads
    grid = (min(tiles, config.get("PROGRAMS_PER_SM", 2) * sm_count(device)),)  # persistent programs
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

