"""Launcher of the decompress kernel: unpack, gather centroids, scale by the norm (, un-rotate)."""

from __future__ import annotations

import torch

from tqgen.codegen.loader import kernel
from tqgen.ops import cdiv
from tqgen.ops.compress import rotation_halves
from tqgen.spec import VariantSpec


def decompress(
    spec: VariantSpec,
    config: dict[str, int],
    packed: torch.Tensor,
    norms: torch.Tensor,
    centroids: torch.Tensor,
    rotation: torch.Tensor | None,
    out: torch.Tensor,
) -> torch.Tensor:
    """Decode ``packed`` [B, H, N, W] + ``norms`` [B, H, N] into ``out`` [B, H, N, D]: one launch of
    ``spec`` (a decompress variant; ``spec.rotate`` un-rotates with ``rotation``, else it is unused).

    Inputs are checked by the caller (:func:`tqgen.turboquant.decompress_into`): unit last-dim
    strides for ``packed`` and ``out``, norms ``[B, H, N]``.  Returns ``out``.
    """
    batch, heads, n_tokens, _ = out.shape
    block_t = config["BLOCK_T"]
    centroids = centroids.to(torch.float32).contiguous()
    rotation_args = (rotation_halves(rotation),) if spec.rotate else ()
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
