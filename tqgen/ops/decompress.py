"""Launcher of the decompress kernel: unpack, gather centroids, scale by the norm (, un-rotate)."""

from __future__ import annotations

import torch

from tqgen.codegen.loader import kernel
from tqgen.quant.packing import packed_width
from tqgen.spec import Family, VariantSpec
from tqgen.ops import cdiv
from tqgen.tuning import launch_config
from tqgen.validation import (
    FLOAT_DTYPES,
    check_bits,
    check_head_dim,
    check_norms,
    check_same_device,
    check_shape,
    check_tensor,
)


def decompress_into(
    packed: torch.Tensor,
    norms: torch.Tensor,
    centroids: torch.Tensor,
    rotation: torch.Tensor | None,
    out: torch.Tensor,
    *,
    bits: int,
    rotated: bool = False,
) -> torch.Tensor:
    """Decode ``packed`` [B, H, N, W] uint8 + ``norms`` [B, H, N] fp32 into ``out`` [B, H, N, D].

    ``rotated=True`` writes the rotated-space vectors n * c[idx] (no ``rotation``
    needed); ``rotated=False`` un-rotates them to the original space with
    ``rotation`` (Pi, [D, D]).  ``out`` is fp16, bf16 or fp32 with a contiguous
    last dim and sets the output dtype.  One kernel launch; returns ``out``.
    """
    check_bits("bits", bits)
    check_tensor("out", out, ndim=4, dtypes=FLOAT_DTYPES)
    head_dim = out.shape[-1]
    check_head_dim("out", head_dim)
    check_tensor("packed", packed, ndim=4, dtypes=(torch.uint8,))
    batch, heads, n_tokens, _ = out.shape
    width = packed_width(head_dim, bits)
    check_shape("packed", packed, (batch, heads, n_tokens, width), f"[B, H, N, packed_width(D={head_dim}, bits={bits})]")
    norms = check_norms("norms", norms, (batch, heads, n_tokens))
    check_tensor("centroids", centroids, ndim=1, dtypes=FLOAT_DTYPES)
    check_shape("centroids", centroids, (1 << bits,), "[2**bits]")
    if not rotated:
        if rotation is None:
            raise ValueError("rotation is required to decompress to the original space (rotated=False)")
        check_tensor("rotation", rotation, ndim=2, dtypes=FLOAT_DTYPES)
        check_shape("rotation", rotation, (head_dim, head_dim), "[D, D]")
    else:
        rotation = None
    for name, tensor in (("packed", packed), ("out", out)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim, got strides {tensor.stride()}")
    device = check_same_device(packed=packed, norms=norms, centroids=centroids, rotation=rotation, out=out)
    if out.numel() == 0:
        return out

    spec = VariantSpec(Family.DECOMPRESS, head_dim, bits, rotate=not rotated)
    config = launch_config(spec, device)
    block_t = config["BLOCK_T"]
    centroids = centroids.to(torch.float32).contiguous()
    rotation_args = () if rotation is None else (rotation.to(torch.float32).contiguous(),)
    grid = (cdiv(n_tokens, block_t), batch * heads)
    kernel(spec)[grid](
        packed, packed.stride(0), packed.stride(1), packed.stride(2),
        norms, norms.stride(0), norms.stride(1), norms.stride(2),
        centroids,
        *rotation_args,
        out, out.stride(0), out.stride(1), out.stride(2),
        n_tokens, heads,
        BLOCK_T=block_t,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return out
