"""tqgen's kernels as PyTorch custom operators, so ``torch.compile`` traces through them.

Three operators in the ``tqgen`` namespace, each calling the existing launchers:

* ``tqgen::decode_attention``: split-K decode (N_q <= 16) and its reduce, in one op.  The
  split partials live in a caller-owned fp32 ``workspace`` (declared mutated), so a captured
  CUDA graph depends on no process-wide buffer; size it with :func:`decode_workspace_numel`.
* ``tqgen::prefill_attention``: the prefill schedule (any N_q).
* ``tqgen::compress``: TurboQuant codes and norms of new K/V tokens (functional: the caller
  writes them into its cache, e.g. with ``index_copy_`` at the cache positions).

K and V are passed as ``(tensor, norms, centroids, bits)``: ``bits = 0`` means a plain
``[B, H_kv, N_kv, D]`` tensor in q's dtype (norms and centroids None), otherwise packed uint8
codes ``[B, H_kv, N_kv, W]`` with fp32 norms ``[B, H_kv, N_kv]`` and their codebook; compressed
operands share ``rotation`` (fp32 ``[D, D]``).  Each op allocates only its outputs (fixed
shapes, so CUDA-graph replays reuse the same memory), never syncs with the device and keeps
no Python-side state a replay would miss.  The fake (meta) implementations give
``torch.compile`` the output shapes without running a kernel.

The ops check only what the kernels cannot survive (workspace size, operand kinds, code
widths); callers that need argument-level errors use :func:`tqgen.attention.attention` and
:class:`tqgen.turboquant.TurboQuant` instead.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from tqgen.compressed import CompressedTensor
from tqgen.ops import attention as attention_ops
from tqgen.ops import compress as compress_ops
from tqgen.ops import decode_sm90
from tqgen.quant.packing import packed_width
from tqgen.spec import DECODE_MAX_Q, SUPPORTED_BITS, Family, VariantSpec, check_bits, reduce_spec
from tqgen.tuning import launch_config, shape_bucket
from tqgen.validation import as_last_dim_contiguous

__all__ = ["compress", "decode_attention", "decode_workspace_numel", "derive_constants", "prefill_attention"]


def _operand(name: str, x: Tensor, norms: Optional[Tensor], centroids: Optional[Tensor], bits: int,
             rotation: Optional[Tensor], dtype: torch.dtype, head_dim: int) -> "Tensor | CompressedTensor":
    """A plain K/V tensor, or the CompressedTensor the launchers read (centroids in q's dtype)."""
    if bits == 0:
        if norms is not None or centroids is not None:
            raise ValueError(f"{name}_bits is 0 (plain {name}) but {name}_norms/{name}_centroids were given")
        return x
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{name}_bits must be 0 (plain) or one of {SUPPORTED_BITS}, got {bits}")
    if norms is None or centroids is None or rotation is None:
        raise ValueError(f"compressed {name} ({name}_bits={bits}) needs {name}_norms, {name}_centroids and rotation")
    if centroids.dtype != dtype:  # converted here, not cached: nothing outlives the call
        centroids = centroids.to(dtype)
    return CompressedTensor(x, norms, bits, head_dim, centroids, rotation)


def _spec(family: Family, q: Tensor, k_bits: int, v_bits: int, kv_heads: int, is_causal: bool) -> VariantSpec:
    group = q.shape[1] // kv_heads
    rotate = bool(k_bits or v_bits)
    return VariantSpec(family, q.shape[-1], k_bits or None, v_bits or None, group, bool(is_causal), rotate)


def _expand_mask(mask: Optional[Tensor], q: Tensor, n_kv: int) -> Optional[Tensor]:
    if mask is None:
        return None
    return mask[(None,) * (4 - mask.dim())].expand(*q.shape[:3], n_kv)


def _split_capacity(spec: VariantSpec, config: dict[str, int], device: torch.device, batch_heads: int) -> int:
    """Workspace slots per row the decode launcher's split plans use (independent of N_kv)."""
    return attention_ops.split_capacity(spec, config, device, batch_heads)


def decode_workspace_numel(batch: int, q_heads: int, kv_heads: int, n_q: int, head_dim: int, n_kv: int,
                           k_bits: int, v_bits: int, device: torch.device | str, is_causal: bool = False) -> int:
    """fp32 elements ``tqgen::decode_attention`` needs in its workspace for this problem size."""
    device = torch.device(device)
    q = torch.empty((batch, q_heads, n_q, head_dim), device="meta")
    spec = _spec(Family.ATTN_DECODE, q, k_bits, v_bits, kv_heads, is_causal)
    config = launch_config(spec, device, shape_bucket(spec, n_q, n_kv, batch * kv_heads))
    partials = batch * q_heads * n_q * _split_capacity(spec, config, device, batch * kv_heads) * (head_dim + 2)
    return _scratch_start(partials) + _scratch_numel(spec, device, batch * kv_heads)


def _scratch_start(partials: int) -> int:
    """The scratch starts 128-byte aligned after the partials."""
    return -(-partials // 32) * 32


def _scratch_numel(spec: VariantSpec, device: torch.device, batch_heads: int) -> int:
    """fp32 elements of per-call scratch after the partials: the Hopper path's query planes."""
    return decode_sm90.planes_numel(batch_heads) if decode_sm90.may_support(spec, device) else 0


def derive_constants(dtype: torch.dtype, k_bits: int, v_bits: int, k_centroids: Optional[Tensor],
                     v_centroids: Optional[Tensor], rotation: Tensor) -> list[Tensor]:
    """Make, now, every value the ops below derive from these codebooks (in the queries' ``dtype``)
    and this rotation: the rotation's fp16 halves (compress), the codebooks in ``dtype`` and the
    Hopper decode path's lookup tables and permuted rotation (:func:`tqgen.ops.derived` keeps them).
    Returns the tensors that were derived (not the inputs themselves), for the caller's byte count.

    A cache calls this when it allocates its buffers, eagerly.  Made for the first time inside a
    compiled region instead, they would come from the private memory pool of torch.compile's CUDA
    graphs (its warm-up run allocates there too) and outlive the graph, which cudagraph trees
    refuse."""
    made = [compress_ops.rotation_halves(rotation), attention_ops.as_dtype(rotation, torch.float32)]
    for bits, centroids in ((k_bits, k_centroids), (v_bits, v_centroids)):
        if bits and centroids is not None:
            made.append(attention_ops.as_dtype(centroids, dtype))
    if k_bits == v_bits == 4 and k_centroids is not None and v_centroids is not None and decode_sm90.may_support(
            VariantSpec(Family.ATTN_DECODE, rotation.shape[0], 4, 4, 1, False, True), rotation.device):
        made += decode_sm90.derive(k_centroids, v_centroids, rotation, dtype)
    inputs = {t.data_ptr() for t in (k_centroids, v_centroids, rotation) if t is not None}
    unique = {t.data_ptr(): t for t in made if t.data_ptr() not in inputs}
    return list(unique.values())


# ------------------------------------------------------------------- decode
@torch.library.custom_op("tqgen::decode_attention", mutates_args=("workspace",))
def decode_attention(
    q: Tensor, k: Tensor, k_norms: Optional[Tensor], k_centroids: Optional[Tensor], k_bits: int,
    v: Tensor, v_norms: Optional[Tensor], v_centroids: Optional[Tensor], v_bits: int,
    rotation: Optional[Tensor], mask: Optional[Tensor], workspace: Tensor, sm_scale: float, is_causal: bool,
) -> Tensor:
    """Split-K decode attention of q ``[B, H_q, N_q <= 16, D]``; returns ``[B, H_q, N_q, D]``."""
    batch, q_heads, n_q, head_dim = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    if n_q > DECODE_MAX_Q:
        raise ValueError(f"tqgen::decode_attention takes at most {DECODE_MAX_Q} query positions, got {n_q}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if n_kv == 0:
        return out.zero_()
    kk = _operand("k", k, k_norms, k_centroids, k_bits, rotation, q.dtype, head_dim)
    vv = _operand("v", v, v_norms, v_centroids, v_bits, rotation, q.dtype, head_dim)
    spec = _spec(Family.ATTN_DECODE, q, k_bits, v_bits, kv_heads, is_causal)
    config = launch_config(spec, q.device, shape_bucket(spec, n_q, n_kv, batch * kv_heads))
    capacity = _split_capacity(spec, config, q.device, batch * kv_heads)
    rows = batch * q_heads * n_q
    parts_end = rows * capacity * (head_dim + 2)
    scratch_start = _scratch_start(parts_end)
    need = scratch_start + _scratch_numel(spec, q.device, batch * kv_heads)
    if workspace.dtype != torch.float32 or workspace.dim() != 1 or workspace.numel() < need:
        raise ValueError(
            f"workspace must be a flat fp32 tensor of at least {need} elements for this call "
            f"(decode_workspace_numel), got {workspace.dtype} {tuple(workspace.shape)}"
        )
    acc_end = rows * capacity * head_dim
    parts = (workspace[:acc_end], workspace[acc_end:acc_end + rows * capacity],
             workspace[acc_end + rows * capacity:parts_end], workspace[scratch_start:need])
    reduce = reduce_spec(spec)
    attention_ops.decode(spec, config, reduce, launch_config(reduce, q.device), q, kk, vv, out, float(sm_scale),
                         _expand_mask(mask, q, n_kv), parts)
    return out


@decode_attention.register_fake
def _decode_attention_fake(q, k, k_norms, k_centroids, k_bits, v, v_norms, v_centroids, v_bits,
                           rotation, mask, workspace, sm_scale, is_causal):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------ prefill
@torch.library.custom_op("tqgen::prefill_attention", mutates_args=())
def prefill_attention(
    q: Tensor, k: Tensor, k_norms: Optional[Tensor], k_centroids: Optional[Tensor], k_bits: int,
    v: Tensor, v_norms: Optional[Tensor], v_centroids: Optional[Tensor], v_bits: int,
    rotation: Optional[Tensor], mask: Optional[Tensor], sm_scale: float, is_causal: bool,
) -> Tensor:
    """Prefill-schedule attention of q ``[B, H_q, N_q, D]``; returns ``[B, H_q, N_q, D]``."""
    _, _, n_q, head_dim = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if n_kv == 0:
        return out.zero_()
    kk = _operand("k", k, k_norms, k_centroids, k_bits, rotation, q.dtype, head_dim)
    vv = _operand("v", v, v_norms, v_centroids, v_bits, rotation, q.dtype, head_dim)
    spec = _spec(Family.ATTN_PREFILL, q, k_bits, v_bits, kv_heads, is_causal)
    config = launch_config(spec, q.device, shape_bucket(spec, n_q, n_kv, q.shape[0] * kv_heads))
    return attention_ops.prefill(spec, config, q, kk, vv, out, float(sm_scale), _expand_mask(mask, q, n_kv))


@prefill_attention.register_fake
def _prefill_attention_fake(q, k, k_norms, k_centroids, k_bits, v, v_norms, v_centroids, v_bits,
                            rotation, mask, sm_scale, is_causal):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------- compress
@torch.library.custom_op("tqgen::compress", mutates_args=())
def compress(x: Tensor, rotation: Tensor, boundaries: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes uint8 ``[B, H, N, W]`` and fp32 norms ``[B, H, N]`` of x ``[B, H, N, D]`` (one launch).

    Rotation ``[D, D]`` and boundaries ``[2**bits - 1]`` are those of a
    :class:`~tqgen.turboquant.TurboQuant` mode of width ``bits``."""
    x = as_last_dim_contiguous(x)
    batch, heads, n, head_dim = x.shape
    spec = VariantSpec(Family.COMPRESS, head_dim, check_bits("bits", bits), rotate=True)
    packed = torch.zeros((batch, heads, n, packed_width(head_dim, bits)), dtype=torch.uint8, device=x.device)
    norms = torch.zeros((batch, heads, n), dtype=torch.float32, device=x.device)
    if packed.numel():
        compress_ops.compress(spec, launch_config(spec, x.device), x, rotation, boundaries, packed, norms, 0)
    return packed, norms


@compress.register_fake
def _compress_fake(x, rotation, boundaries, bits):
    batch, heads, n, head_dim = x.shape
    if bits == 3:
        width = 3 * ((head_dim + 7) // 8)
    else:
        per_byte = 8 // bits
        width = (head_dim + per_byte - 1) // per_byte
    return (x.new_empty((batch, heads, n, width), dtype=torch.uint8),
            x.new_empty((batch, heads, n), dtype=torch.float32))


def attention_op(q: Tensor, k: Tensor, k_norms: Optional[Tensor], k_centroids: Optional[Tensor], k_bits: int,
                 v: Tensor, v_norms: Optional[Tensor], v_centroids: Optional[Tensor], v_bits: int,
                 rotation: Optional[Tensor], mask: Optional[Tensor], workspace: Tensor,
                 sm_scale: Optional[float], is_causal: bool) -> Tensor:
    """Decode (N_q <= 16) or prefill op by q's length, a decision made at trace time (shapes are static)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if q.shape[2] <= DECODE_MAX_Q:
        return torch.ops.tqgen.decode_attention(q, k, k_norms, k_centroids, k_bits, v, v_norms, v_centroids,
                                                v_bits, rotation, mask, workspace, scale, is_causal)
    return torch.ops.tqgen.prefill_attention(q, k, k_norms, k_centroids, k_bits, v, v_norms, v_centroids,
                                             v_bits, rotation, mask, scale, is_causal)
