"""What a kernel variant is: one frozen value per generated file.

A ``VariantSpec`` names everything a template needs to render one specialised
Triton kernel.  Its ``id`` is readable and filename-safe (FlashInfer style) and is
used for the generated file, the manifest entry and the tune-cache key, e.g.
``attn_decode_d128_k4v4_g4_causal_rot``.
"""

from __future__ import annotations

import enum
import fnmatch
import itertools
import numbers
from dataclasses import dataclass
from typing import Iterator

# ------------------------------------------------------------------ limits
# Every head-dim, code-width, GQA-group and schedule rule of tqgen lives here; the entry points
# (through tqgen.validation), VariantSpec.validate and the math in tqgen.quant all check with it.
SUPPORTED_BITS = (2, 3, 4)  # code widths of the kernels and the packed layouts
BITS_FOR_LEVELS = {1 << bits: bits for bits in SUPPORTED_BITS}  # codebook size -> code width
MIN_HEAD_DIM, MAX_HEAD_DIM = 32, 256  # head dims of the kernels (even)
MAX_GROUP = 16  # query heads per KV head
DECODE_MAX_Q = 16  # N_q up to this takes the split-K decode schedule, longer queries prefill
# The float math in tqgen.quant has wider domains than the kernels: the Lloyd-Max solver also
# takes 1 bit and any even head_dim >= 4 (checked against Max's Gaussian values at D = 16384),
# the rotation any even head_dim up to 4096 (a D x D QR on the CPU), the packing any D >= 1.
CODEBOOK_BITS = (1, *SUPPORTED_BITS)
CODEBOOK_MIN_HEAD_DIM = 4
ROTATION_MIN_HEAD_DIM, ROTATION_MAX_HEAD_DIM = 2, 4096


def check_head_dim(
    name: str, head_dim: object, lo: int = MIN_HEAD_DIM, hi: int | None = MAX_HEAD_DIM, *, even: bool = True
) -> int:
    """``head_dim`` as an int in ``[lo, hi]`` (``hi=None``: no upper bound), even unless ``even=False``.

    The defaults are the kernels' rule; ``ValueError`` naming ``name`` otherwise (also for floats
    and bools, which would fail later and less clearly)."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral):
        raise ValueError(f"{name}: head_dim must be an int, got {type(head_dim).__name__} {head_dim!r}")
    if (even and head_dim % 2) or head_dim < lo or (hi is not None and head_dim > hi):
        parity = "even and " if even else ""
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: head_dim must be {parity}{bounds}, got {head_dim}")
    return int(head_dim)


def check_bits(name: str, bits: object, allowed: tuple[int, ...] = SUPPORTED_BITS) -> int:
    """An int code width in ``allowed`` (default: the kernels' widths).  ``TypeError`` for 4.0 or
    True (they fail later, unclearly), ``ValueError`` for an unsupported width."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name}: bits must be an int, one of {allowed}; got {type(bits).__name__} {bits!r}")
    if bits not in allowed:
        raise ValueError(f"{name}: bits must be one of {allowed}, got {bits!r}")
    return int(bits)


class Family(str, enum.Enum):
    """Kernel families; each has one template in ``templates/``."""

    ATTN_PREFILL = "attn_prefill"  # tiles of queries x loop over KV tiles
    ATTN_DECODE = "attn_decode"  # split-K partials over the KV sequence
    DECODE_REDUCE = "decode_reduce"  # log-sum-exp merge of split-K partials
    COMPRESS = "compress"  # norm, rotate, quantise, pack
    DECOMPRESS = "decompress"  # unpack, gather centroids, scale (, un-rotate)
    SCORES = "scores"  # legacy Q @ K^T only, from pre-rotated queries

    @property
    def is_attention(self) -> bool:
        return self in (Family.ATTN_PREFILL, Family.ATTN_DECODE)

    @property
    def is_codec(self) -> bool:
        return self in (Family.COMPRESS, Family.DECOMPRESS)


@dataclass(frozen=True)
class VariantSpec:
    """One kernel variant.

    Attributes:
        family: which kernel.
        head_dim: D, any even value in [32, 256].
        k_bits: bits of the compressed keys, ``None`` = fp16/bf16 keys.  For the
            compress/decompress/scores families this is the code width.
        v_bits: bits of the compressed values, ``None`` = uncompressed values.
        group: GQA group size (query heads per KV head), 1..16.
        causal: bottom-right aligned causal masking (attention families).
        rotate: the kernel applies the TurboQuant rotation itself: query
            pre-rotation in the prologue / output post-rotation in the epilogue
            (attention, decode_reduce), or un-rotation to the original space
            (decompress).  Compress always rotates.
    """

    family: Family
    head_dim: int
    k_bits: int | None = None
    v_bits: int | None = None
    group: int = 1
    causal: bool = False
    rotate: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", Family(self.family))

    # ------------------------------------------------------------------ naming
    @property
    def id(self) -> str:
        """Canonical, filename-safe identifier."""
        f = self.family
        parts = [f.value, f"d{self.head_dim}"]
        if f.is_attention:
            parts.append(_kv_tag(self.k_bits, self.v_bits))
            parts.append(f"g{self.group}")
            if self.causal:
                parts.append("causal")
        elif f is Family.SCORES:
            parts += [f"k{self.k_bits}", f"g{self.group}"]
        elif f.is_codec:
            parts.append(f"b{self.k_bits}")
        if self.rotate:
            parts.append("rot")
        return "_".join(parts)

    @property
    def compressed(self) -> bool:
        return self.k_bits is not None or self.v_bits is not None

    # -------------------------------------------------------------- validation
    def validate(self) -> "VariantSpec":
        """Raise ``ValueError`` naming the field for impossible combinations (``TypeError`` for a
        code width that is not an int)."""
        f = self.family
        check_head_dim("head_dim", self.head_dim)
        for name in ("k_bits", "v_bits"):
            bits = getattr(self, name)
            if bits is not None:
                check_bits(name, bits)
        if not isinstance(self.group, int) or not 1 <= self.group <= MAX_GROUP:
            raise ValueError(f"group must be an int in [1, {MAX_GROUP}], got {self.group!r}")
        if f.is_attention:
            if self.rotate and not self.compressed:
                raise ValueError(f"{self.id}: rotate=True needs compressed K or V")
            # compressed without rotate is allowed: the caller passes a pre-rotated query and
            # un-rotates the output
            return self
        if self.causal:
            raise ValueError(f"causal=True only applies to attention families, not {f.value}")
        if f is Family.DECODE_REDUCE:
            if self.compressed or self.group != 1:
                raise ValueError("decode_reduce takes only head_dim and rotate")
            return self
        if self.k_bits is None:
            raise ValueError(f"{f.value} needs k_bits (the code width)")
        if self.v_bits is not None:
            raise ValueError(f"{f.value} has no v_bits")
        if f.is_codec and self.group != 1:
            raise ValueError(f"{f.value} has no GQA group")
        if f is Family.COMPRESS and not self.rotate:
            raise ValueError("compress always rotates: set rotate=True")
        if f is Family.SCORES and self.rotate:
            raise ValueError("scores takes a pre-rotated query: rotate must be False")
        return self


def reduce_spec(spec: VariantSpec) -> VariantSpec:
    """The decode_reduce variant that merges a decode variant's splits: it rotates back only
    compressed V."""
    return VariantSpec(Family.DECODE_REDUCE, spec.head_dim, rotate=spec.rotate and spec.v_bits is not None)


def _kv_tag(k_bits: int | None, v_bits: int | None) -> str:
    if k_bits is None and v_bits is None:
        return "fp"
    return f"k{k_bits or 'fp'}v{v_bits or 'fp'}"


# ------------------------------------------------------------- default matrix
DEFAULT_HEAD_DIMS = (32, 64, 80, 96, 128, 256)
DEFAULT_KV_MODES: tuple[tuple[int | None, int | None], ...] = (
    (None, None),  # vanilla FlashAttention
    (4, None),  # K-only 4-bit
    (4, 4),
    (3, 3),
    (2, 2),
    (4, 3),  # mixed widths
)
DEFAULT_GROUPS = (1, 2, 4, 8)


def default_matrix() -> Iterator[VariantSpec]:
    """Every variant whose rendered file is committed under ``generated/``."""
    for d in DEFAULT_HEAD_DIMS:
        for fam in (Family.ATTN_PREFILL, Family.ATTN_DECODE):
            for (kb, vb), g, causal in itertools.product(DEFAULT_KV_MODES, DEFAULT_GROUPS, (False, True)):
                rot = kb is not None or vb is not None
                yield VariantSpec(fam, d, kb, vb, g, causal, rot)
        for rot in (False, True):
            yield VariantSpec(Family.DECODE_REDUCE, d, rotate=rot)
        for bits in SUPPORTED_BITS:
            yield VariantSpec(Family.COMPRESS, d, bits, rotate=True)
            for rot in (False, True):
                yield VariantSpec(Family.DECOMPRESS, d, bits, rotate=rot)
            for g in DEFAULT_GROUPS:
                yield VariantSpec(Family.SCORES, d, bits, group=g)


def select(specs: Iterator[VariantSpec], pattern: str | None) -> list[VariantSpec]:
    """Filter by a shell-style pattern on the id (a bare word matches as a substring)."""
    specs = list(specs)
    if not pattern:
        return specs
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [s for s in specs if fnmatch.fnmatchcase(s.id, pattern)]
