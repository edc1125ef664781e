"""The compressed-tensor type that every kernel entry point accepts.

``CompressedTensor`` is what the attention dispatchers read (K and/or V, any
width, K and V may differ) and what ``TurboQuant.compress`` writes.  It carries
the packed codes, the fp32 norms, and the codebook/rotation needed to read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CompressedTensor:
    """TurboQuant-compressed vectors laid out like an attention K or V tensor.

    Attributes:
        packed: uint8 ``[B, H, N, packed_width(head_dim, bits)]`` codes (layout: README "Formats").
        norms: fp32 ``[B, H, N]`` vector norms.
        bits: code width (2, 3 or 4).
        head_dim: D of the original vectors.
        centroids: fp32 ``[2**bits]`` Lloyd-Max codebook the codes index.
        rotation: fp32 ``[D, D]`` orthogonal Pi (codes live in the rotated space
            ``y = x_unit @ Pi.T``).
        offset: ``None``, or an fp32 ``[B, H, 1, D]`` vector subtracted from every stored vector
            before compression (the codes hold ``x - offset``).  Attention reads the codes as
            they are: for keys the offset adds ``q . offset`` to every score of a query, which
            softmax ignores.  ``TurboQuant.decompress`` adds it back.
    """

    packed: torch.Tensor
    norms: torch.Tensor
    bits: int
    head_dim: int
    centroids: torch.Tensor
    rotation: torch.Tensor
    offset: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``[B, H, N, D]`` of the tensor this stands for."""
        b, h, n, _ = self.packed.shape
        return (b, h, n, self.head_dim)

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def nbytes(self) -> int:
        """Bytes held by codes and norms."""
        return self.packed.numel() * self.packed.element_size() + self.norms.numel() * self.norms.element_size()
