"""Everything a template may read, derived from a ``VariantSpec`` in one place.

Templates never compute sizes themselves: they get them here, so a template reads
as kernel structure and the arithmetic on shapes is tested Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqgen.quant.packing import packed_width, plane_width, planes
from tqgen.spec import Family, VariantSpec


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ``tl.dot`` needs every dimension >= 16.
MIN_DOT_DIM = 16


@dataclass(frozen=True)
class CodeLayout:
    """How one compressed operand (K or V) is laid out, for a template.

    Coordinate ``d = planes * j + k`` of the rotated vector lives in plane ``k``
    at position ``j``; each plane is unpacked and used on its own (two dot
    products for 4-bit instead of an interleave).
    """

    head_dim: int
    bits: int
    planes: int  # P: 2 for 4-bit, 4 for 2-bit, 8 for 3-bit
    plane_width: int  # ceil(D / P): coordinates per plane
    plane_pad: int  # plane_width padded to a power of two >= 16 (tl.dot / arange)
    row_bytes: int  # packed bytes per vector
    levels: int  # 2 ** bits

    @property
    def bit_planes(self) -> int:
        """3-bit codes are stored as three bit-planes of ``plane_width`` bytes."""
        return 3 if self.bits == 3 else 1

    @property
    def plane_masked(self) -> bool:
        """Whether ``j < plane_width`` can be false for ``j`` in ``arange(0, plane_pad)``."""
        return self.plane_pad != self.plane_width

    def coord_masked(self, k: int) -> bool:
        """Whether coordinate ``planes * j + k`` of plane ``k`` can reach ``head_dim`` (a mask is needed)."""
        return self.planes * (self.plane_pad - 1) + k >= self.head_dim


def code_layout(head_dim: int, bits: int | None) -> CodeLayout | None:
    if bits is None:
        return None
    width = plane_width(head_dim, bits)
    return CodeLayout(
        head_dim=head_dim,
        bits=bits,
        planes=planes(bits),
        plane_width=width,
        plane_pad=max(MIN_DOT_DIM, next_pow2(width)),
        row_bytes=packed_width(head_dim, bits),
        levels=1 << bits,
    )


# The codecs stream Pi in column slices of at most this many, so one [plane_pad, D_CHUNK] fp32
# tile of Pi stays small even at head_dim 256; decode_reduce rotates back in slices of at most
# REDUCE_CHUNK output columns.
MAX_D_CHUNK = 64
MAX_REDUCE_CHUNK = 128


def template_context(spec: VariantSpec) -> dict[str, Any]:
    """The variables every template is rendered with."""
    d = spec.head_dim
    d_pad = max(MIN_DOT_DIM, next_pow2(d))
    k_layout = code_layout(d, spec.k_bits)
    v_layout = code_layout(d, spec.v_bits) if spec.family.is_attention else None
    return {
        "spec": spec,
        "id": spec.id,
        "family": spec.family.value,
        "kernel_name": f"{spec.family.value}_kernel",
        "HEAD_DIM": d,
        "D_PAD": d_pad,
        "D_MASKED": d != d_pad,  # a tl.arange over the head dim reaches past it: `d < HEAD_DIM` masks
        "D_CHUNK": min(d_pad, MAX_D_CHUNK),
        "REDUCE_CHUNK": min(d_pad, MAX_REDUCE_CHUNK),
        "GROUP": spec.group,
        "CAUSAL": spec.causal,
        "ROTATE": spec.rotate,
        "k": k_layout,
        "v": v_layout,
        # codec/scores families: the single code layout
        "code": k_layout if spec.family in (Family.COMPRESS, Family.DECOMPRESS, Family.SCORES) else None,
    }
