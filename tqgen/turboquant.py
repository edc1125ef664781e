"""``TurboQuant``: one quantisation mode, owning both the cache-write and the read-side data.

A mode is (head_dim, bits, seed).  It fixes the rotation Pi and the Lloyd-Max
codebook, so one object serves every layer (vLLM style): ``compress`` writes new
tokens into a preallocated ``CompressedTensor`` in one kernel launch and
``decompress`` reads them back.  ``compress_into`` / ``decompress_into`` do the same on
bare buffers, and ``tq4_compress`` / ``tq4_decompress`` are the seed-named 4-bit wrappers
(``turboquant_vllm.triton``).  The checks live here; :mod:`tqgen.ops.compress` and
:mod:`tqgen.ops.decompress` only launch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tqgen.compressed import CompressedTensor
from tqgen.ops import compress as compress_ops
from tqgen.ops import decompress as decompress_ops
from tqgen.quant.codebook import Codebook, lloyd_max_codebook
from tqgen.quant.packing import packed_width
from tqgen.quant.rotation import rotation_matrix
from tqgen.spec import Family, VariantSpec
from tqgen.tuning import launch_config
from tqgen.validation import (
    FLOAT_DTYPES,
    check_bits,
    check_head_dim,
    check_norms,
    check_same_device,
    check_shape,
    check_tensor,
    check_vectors,
)

Device = torch.device | str | None


@dataclass(frozen=True)
class TurboQuant:
    """One TurboQuant quantisation mode.

    Attributes:
        head_dim: D, even, in [32, 256] (``tqgen.spec.check_head_dim``).
        bits: code width, 2, 3 or 4 (``tqgen.spec.SUPPORTED_BITS``).
        seed: seed of the rotation (42 = turboquant_vllm's, so caches are interchangeable).

    The rotation and the codebook are built once and cached per device; never
    modify the tensors returned by ``rotation``/``centroids``/``boundaries``.
    """

    head_dim: int
    bits: int
    seed: int = 42

    def __post_init__(self) -> None:
        check_head_dim("head_dim", self.head_dim)
        check_bits("bits", self.bits)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    # ------------------------------------------------------------ read-side data
    @property
    def codebook(self) -> Codebook:
        """The Lloyd-Max codebook (CPU, fp32)."""
        return lloyd_max_codebook(self.head_dim, self.bits)

    @property
    def packed_width(self) -> int:
        """Packed bytes per vector."""
        return packed_width(self.head_dim, self.bits)

    def rotation(self, device: Device = None) -> torch.Tensor:
        """Pi, fp32 [D, D] on ``device`` (rotated y = x_unit @ Pi.T)."""
        return rotation_matrix(self.head_dim, self.seed, device)

    def centroids(self, device: Device = None) -> torch.Tensor:
        """fp32 [2**bits] centroids, ascending."""
        return self.codebook.to(device or "cpu").centroids

    def boundaries(self, device: Device = None) -> torch.Tensor:
        """fp32 [2**bits - 1] cell boundaries (midpoints of neighbouring centroids)."""
        return self.codebook.to(device or "cpu").boundaries

    # ----------------------------------------------------------------- buffers
    def empty(self, batch: int, heads: int, capacity: int, device: Device = None) -> CompressedTensor:
        """A zero-filled buffer for ``capacity`` tokens: packed uint8 [B, H, cap, W], norms fp32 [B, H, cap].

        Unwritten slots have norm 0 and decode to zero vectors.
        """
        for name, value in (("batch", batch), ("heads", heads), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        device = torch.device(device or "cpu")
        return CompressedTensor(
            packed=torch.zeros((batch, heads, capacity, self.packed_width), dtype=torch.uint8, device=device),
            norms=torch.zeros((batch, heads, capacity), dtype=torch.float32, device=device),
            bits=self.bits,
            head_dim=self.head_dim,
            centroids=self.centroids(device),
            rotation=self.rotation(device),
        )

    # ------------------------------------------------------------------ codecs
    def compress(self, x: torch.Tensor, out: CompressedTensor | None = None, start: int = 0) -> CompressedTensor:
        """Compress ``x`` [B, H, N, D] (fp16/bf16/fp32, any strides but the last) in one launch.

        With ``out`` (e.g. from ``empty``) the N new tokens are written into it at
        token positions [start, start + N); everything else in ``out`` is left
        untouched.  Without ``out`` a buffer of exactly N tokens is allocated
        (``start`` must then be 0).

        Returns a ``CompressedTensor`` viewing the N tokens just written (a view
        into ``out`` when given, so the caller's buffer stays the cache).
        """
        check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES)
        batch, heads, n_tokens, head_dim = x.shape
        if head_dim != self.head_dim:
            raise ValueError(f"x has head_dim {head_dim} (last dim) but this TurboQuant mode has head_dim {self.head_dim}")
        if out is None:
            if start != 0:
                raise ValueError(f"start={start} needs an out buffer to write into; without out, start must be 0")
            out = self.empty(batch, heads, n_tokens, x.device)
        else:
            self._check_compatible("out", out)
        compress_into(
            x, self.rotation(out.device), self.boundaries(out.device), out.packed, out.norms,
            bits=self.bits, start=start,
        )
        return self._with_tensors(out, out.packed[:, :, start:start + n_tokens], out.norms[:, :, start:start + n_tokens])

    def decompress(
        self,
        ct: CompressedTensor,
        rotated: bool = False,
        dtype: torch.dtype = torch.float16,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode ``ct`` to [B, H, N, D] in one launch.

        ``rotated=True`` stays in the rotated space (n * c[idx]); ``rotated=False``
        returns the original space (n * c[idx] @ Pi).  The codebook and rotation
        carried by ``ct`` are used.  ``out`` (fp16/bf16/fp32, contiguous last
        dim) is written when given and then sets the dtype (``dtype`` is ignored);
        otherwise a ``dtype`` tensor is allocated.
        """
        self._check_compatible("ct", ct)
        if out is None:
            if dtype not in FLOAT_DTYPES:
                raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
            out = torch.empty(ct.shape, dtype=dtype, device=ct.device)
        decompress_into(ct.packed, ct.norms, ct.centroids, ct.rotation, out, bits=self.bits, rotated=rotated)
        if ct.offset is not None:  # the codes hold x - offset (in the rotated space: offset @ Pi.T)
            offset = ct.offset @ ct.rotation.to(ct.offset.device).T if rotated else ct.offset
            out += offset.to(out.dtype)
        return out

    # ---------------------------------------------------------------- helpers
    def _check_compatible(self, name: str, ct: CompressedTensor) -> None:
        if not isinstance(ct, CompressedTensor):
            raise TypeError(f"{name} must be a CompressedTensor, got {type(ct).__name__}")
        if ct.bits != self.bits or ct.head_dim != self.head_dim:
            raise ValueError(
                f"{name} holds {ct.bits}-bit codes of head_dim {ct.head_dim}, but this TurboQuant mode is "
                f"{self.bits}-bit, head_dim {self.head_dim}"
            )

    @staticmethod
    def _with_tensors(ct: CompressedTensor, packed: torch.Tensor, norms: torch.Tensor) -> CompressedTensor:
        return CompressedTensor(packed, norms, ct.bits, ct.head_dim, ct.centroids, ct.rotation, ct.offset)


# --------------------------------------------------- checked buffer-level entry points
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
    x = check_vectors("x", x)
    batch, heads, n_tokens, head_dim = x.shape
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
    spec = VariantSpec(Family.COMPRESS, head_dim, bits, rotate=True)
    compress_ops.compress(spec, launch_config(spec, device), x, rotation, boundaries, packed, norms, start)


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
    head_dim = check_head_dim("out", out.shape[-1])
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
    return decompress_ops.decompress(spec, launch_config(spec, device), packed, norms, centroids, rotation, out)


# ------------------------------------------------------------ seed-named 4-bit wrappers
@functools.lru_cache(maxsize=None)
def _tq4(head_dim: int) -> TurboQuant:
    return TurboQuant(head_dim, 4)


def tq4_compress(
    x: torch.Tensor,
    rotation: torch.Tensor | None = None,
    boundaries: torch.Tensor | None = None,
    packed_out: torch.Tensor | None = None,
    norms_out: torch.Tensor | None = None,
    *,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused TQ4 compress (norm + rotate + quantise + pack), one launch.

    Args:
        x: [B, H, N, D] fp16/bf16/fp32 (any strides but the last).
        rotation: Pi [D, D]; default the seed-42 rotation.
        boundaries: [15] 4-bit cell boundaries; default the Lloyd-Max ones for D.
        packed_out, norms_out: optional preallocated buffers, uint8 [B, H, cap, D/2]
            and fp32 [B, H, cap] (or [..., 1]); pass both or neither.
        start: token position in the buffers where the N new tokens go.

    Returns:
        (packed uint8 [B, H, N, D/2], norms fp32 [B, H, N]) for the N tokens
        written: views into the buffers when they are given.
    """
    check_tensor("x", x, ndim=4, dtypes=FLOAT_DTYPES)
    batch, heads, n_tokens, head_dim = x.shape
    mode = _tq4(check_head_dim("x", head_dim))
    if rotation is None:
        rotation = mode.rotation(x.device)
    if boundaries is None:
        boundaries = mode.boundaries(x.device)
    if (packed_out is None) != (norms_out is None):
        raise ValueError("pass both packed_out and norms_out, or neither")
    if packed_out is None:
        if start != 0:
            raise ValueError(f"start={start} needs packed_out/norms_out buffers; without them start must be 0")
        buffer = mode.empty(batch, heads, n_tokens, x.device)
        packed_out, norms_out = buffer.packed, buffer.norms
    compress_into(x, rotation, boundaries, packed_out, norms_out, bits=4, start=start)
    return packed_out[:, :, start:start + n_tokens], norms_out[:, :, start:start + n_tokens]


def tq4_decompress(
    packed: torch.Tensor,
    norms: torch.Tensor,
    centroids: torch.Tensor | None = None,
    rotation: torch.Tensor | None = None,
    *,
    rotated: bool = False,
    dtype: torch.dtype = torch.float16,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused TQ4 decompress (unpack + gather + scale, + un-rotate unless ``rotated``), one launch.

    Args:
        packed: uint8 [B, H, N, D/2] (high nibble = even coordinate).
        norms: fp32 [B, H, N] or [..., 1].
        centroids: [16] codebook; default the Lloyd-Max one for D.
        rotation: Pi [D, D]; default the seed-42 rotation (unused when ``rotated``).
        rotated: stay in the rotated space instead of returning to the original one.
        dtype: output dtype when ``out`` is None (fp16, bf16 or fp32).
        out: optional [B, H, N, D] output (its dtype wins over ``dtype``).

    Returns:
        [B, H, N, D] decoded vectors.
    """
    check_tensor("packed", packed, ndim=4, dtypes=(torch.uint8,))
    head_dim = 2 * packed.shape[-1]
    mode = _tq4(check_head_dim("packed (2 x last dim)", head_dim))
    if centroids is None:
        centroids = mode.centroids(packed.device)
    if rotation is None and not rotated:
        rotation = mode.rotation(packed.device)
    if out is None:
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
        out = torch.empty((*packed.shape[:3], head_dim), dtype=dtype, device=packed.device)
    return decompress_into(packed, norms, centroids, rotation, out, bits=4, rotated=rotated)
