"""Bit packing of codebook indices (the layouts are in README "Formats").

Coordinate d = P * j + k lives in "plane" k at byte (or bit) position j, with P = planes(bits):
P = 2 for 4-bit, 4 for 2-bit, 8 for 3-bit. Byte layouts:

- 4-bit: byte j = idx[2j] << 4 | idx[2j+1] (high nibble = even coordinate, turboquant_vllm order).
- 2-bit: byte j = idx[4j] << 6 | idx[4j+1] << 4 | idx[4j+2] << 2 | idx[4j+3].
- 3-bit: three bit-planes of ceil(D/8) bytes each; plane b (b = 0 is the least significant bit)
  starts at byte b * ceil(D/8), and its byte j bit (7 - k) holds bit b of idx[8j + k].

Coordinates past D (when P does not divide D) are packed as 0. For 3-bit that costs up to 2 bytes
over ceil(3D/8) (none when D % 8 == 0).
"""

from __future__ import annotations

import torch

from tqgen.spec import check_bits, check_head_dim

_PLANES = {2: 4, 3: 8, 4: 2}


def _check_head_dim(head_dim: int) -> None:
    """The layout is defined for any D >= 1 (coordinates past D pack as 0)."""
    check_head_dim("packing", head_dim, 1, None, even=False)


def planes(bits: int) -> int:
    """Number of coordinates that share one byte (or, for 3-bit, one bit position of 3 bytes)."""
    check_bits("packing", bits)
    return _PLANES[bits]


def plane_width(head_dim: int, bits: int) -> int:
    """Bytes per plane: ceil(head_dim / planes(bits))."""
    _check_head_dim(head_dim)
    return -(-head_dim // planes(bits))


def packed_width(head_dim: int, bits: int) -> int:
    """Packed bytes per vector: ceil(D/2) (4-bit), ceil(D/4) (2-bit), 3 * ceil(D/8) (3-bit)."""
    width = plane_width(head_dim, bits)
    return 3 * width if bits == 3 else width


def _shifts(count: int, step: int, device: torch.device) -> torch.Tensor:
    """[step * (count - 1), ..., step, 0]: the first coordinate goes to the most significant bits."""
    return torch.arange(count - 1, -1, -1, device=device, dtype=torch.int32) * step


def pack(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 indices [..., D] (each < 2**bits) into uint8 [..., packed_width(D, bits)]."""
    check_bits("packing", bits)
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.uint8:
        raise ValueError(f"indices must be a torch.uint8 tensor, got {getattr(indices, 'dtype', type(indices))}")
    if indices.dim() == 0 or indices.shape[-1] == 0:
        raise ValueError(f"indices must have a non-empty last dimension, got shape {tuple(indices.shape)}")
    if indices.numel() and int(indices.max()) >= 1 << bits:
        raise ValueError(f"indices must be < 2**bits = {1 << bits}, got max {int(indices.max())}")
    head_dim = indices.shape[-1]
    per_byte = planes(bits)
    width = plane_width(head_dim, bits)
    padded = torch.nn.functional.pad(indices.to(torch.int32), (0, width * per_byte - head_dim))
    grouped = padded.reshape(*indices.shape[:-1], width, per_byte)
    if bits == 3:
        positions = _shifts(per_byte, 1, indices.device)  # bit 7 - k for coordinate 8j + k
        bit_planes = [(((grouped >> b) & 1) << positions).sum(-1) for b in range(3)]
        return torch.cat(bit_planes, dim=-1).to(torch.uint8)
    return (grouped << _shifts(per_byte, bits, indices.device)).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 [..., packed_width(head_dim, bits)] -> uint8 [..., head_dim]."""
    check_bits("packing", bits)
    _check_head_dim(head_dim)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise ValueError(f"packed must be a torch.uint8 tensor, got {getattr(packed, 'dtype', type(packed))}")
    expected = packed_width(head_dim, bits)
    if packed.dim() == 0 or packed.shape[-1] != expected:
        raise ValueError(
            f"packed last dimension must be packed_width({head_dim}, {bits}) = {expected}, "
            f"got shape {tuple(packed.shape)}"
        )
    per_byte = planes(bits)
    width = plane_width(head_dim, bits)
    batch = packed.shape[:-1]
    as_int = packed.to(torch.int32)
    if bits == 3:
        positions = _shifts(per_byte, 1, packed.device)
        bit_planes = as_int.reshape(*batch, 3, width, 1)
        bit_values = (bit_planes >> positions) & 1  # [..., 3, width, 8]
        weights = torch.tensor([1, 2, 4], device=packed.device, dtype=torch.int32).reshape(3, 1, 1)
        grouped = (bit_values * weights).sum(-3)
    else:
        grouped = (as_int.unsqueeze(-1) >> _shifts(per_byte, bits, packed.device)) & ((1 << bits) - 1)
    return grouped.reshape(*batch, width * per_byte)[..., :head_dim].to(torch.uint8).contiguous()
