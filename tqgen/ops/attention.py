"""Launchers for the generated attention kernels: prefill, split-K decode and its reduce.

Thin on purpose: they take the variant, its launch config and inputs already checked by
:mod:`tqgen.attention`, pass strides (any layout with a unit last-dim stride is read in
place), pick the grid and, for decode, the splits (``tqgen.tuning.splits``).  Nothing here
checks arguments, benchmarks, syncs with the device or allocates besides a cached decode
workspace (CUDA-graph capturable).
"""

from __future__ import annotations

import functools
from typing import Any, Union

import torch
from triton.runtime.errors import OutOfResources

from tqgen.codegen.context import next_pow2
from tqgen.ops.launch import kernel  # the generated kernel, launched without Triton's per-call binding
from tqgen.compressed import CompressedTensor
from tqgen.ops import cdiv, decode_sm90, derived, stream_id
from tqgen.spec import Family, VariantSpec
from tqgen.tuning import splits
from tqgen.tuning.arch import ARCH_LIMITS
from tqgen.tuning.defaults import smaller_prefill_config

KV = Union[torch.Tensor, CompressedTensor]

LOG2E = 1.4426950408889634
REDUCE_ROWS = 16  # rows per decode_reduce program (tl.dot needs >= 16)


# ------------------------------------------------------------------ operands
def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, contiguous; conversions are cached per tensor and version (``derived``)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return derived("as_dtype", t, dtype, lambda: t.detach().to(dtype).contiguous())


def operand_args(x: KV, dtype: torch.dtype) -> list[Any]:
    """Kernel arguments of K or V: a plain tensor and its strides, or codes, norms and codebook."""
    if isinstance(x, CompressedTensor):
        norms = x.norms.squeeze(-1) if x.norms.dim() == 4 else x.norms
        return [x.packed, *x.packed.stride()[:3], norms, *norms.stride(), as_dtype(x.centroids, dtype)]
    return [x, *x.stride()]


def rotation_of(k: KV, v: KV) -> torch.Tensor | None:
    """The fp32 rotation Pi of the compressed operand(s) (K and V share it)."""
    for x in (k, v):
        if isinstance(x, CompressedTensor):
            return as_dtype(x.rotation, torch.float32)
    return None


def mask_args(mask: torch.Tensor | None, q: torch.Tensor) -> tuple[list[Any], bool, bool]:
    """(pointer and 4 strides, HAS_MASK, MASK_IS_BOOL) of a mask expanded to [B, H_q, N_q, N_kv]."""
    if mask is None:
        return [q, 0, 0, 0, 0], False, False
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return [mask, *mask.stride()], True, mask.dtype == torch.uint8


# ------------------------------------------------------------------- prefill
def prefill(
    spec: VariantSpec,
    config: dict[str, int],
    q: torch.Tensor,
    k: KV,
    v: KV,
    out: torch.Tensor,
    sm_scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prefill schedule: grid (row blocks of N_q * group rows, B * H_kv).

    A config that needs more shared memory than the GPU has (the defaults are sized for 2-byte
    K/V without a mask) steps down through ``smaller_prefill_config``; the config that compiled
    is remembered per variant, config and operand kinds, so only the first launch pays."""
    assert spec.family is Family.ATTN_PREFILL
    batch, _, n_q, _ = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    margs, has_mask, is_bool = mask_args(mask, q)
    pi = [rotation_of(k, v)] if spec.rotate else []
    args = [
        q, *q.stride(),
        *operand_args(k, q.dtype),
        *operand_args(v, q.dtype),
        *pi,
        out, *out.stride(),
        *margs,
        sm_scale * LOG2E,
        n_q, n_kv, kv_heads,
    ]  # fmt: skip
    key = (spec, tuple(config.items()), q.dtype, _kind(k), _kind(v), has_mask and mask.dtype)
    config = _FITTED.get(key, config)
    while True:
        block_m = config["BLOCK_M"]
        grid = (cdiv(n_q * spec.group, block_m), batch * kv_heads)
        try:
            kernel(spec)[grid](
                *args, HAS_MASK=has_mask, MASK_IS_BOOL=is_bool, BLOCK_M=block_m, BLOCK_N=config["BLOCK_N"],
                num_warps=config["num_warps"], num_stages=config["num_stages"],
            )  # fmt: skip
        except OutOfResources:
            config = smaller_prefill_config(config)
            if config is None:
                raise
            _FITTED[key] = config
            continue
        return out


_FITTED: dict[tuple, dict[str, int]] = {}  # (variant, config, operand kinds) -> a config that fits


def _kind(x: KV) -> object:
    return x.bits if isinstance(x, CompressedTensor) else x.dtype


# -------------------------------------------------------------------- decode
@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (the interpreter pretends to have a few)."""
    if device.type != "cuda":
        return ARCH_LIMITS["cpu"].sm_count
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_capacity(spec: VariantSpec, config: dict[str, int], device: torch.device, batch_heads: int) -> int:
    """Workspace slots per row that any decode call of ``spec`` with ``config`` may use.

    A variant the Hopper kernel (``decode_sm90``) may take gets room for its policy too: one
    capacity serves every call, whichever path it takes."""
    policies = [splits.policy_of(config)]
    if decode_sm90.may_support(spec, device):
        policies.append(splits.HOPPER)
    return splits.capacity(batch_heads, sm_count(device), *policies)


# One flat fp32 buffer per (device, stream), grown geometrically, so the cache is bounded and two
# streams decoding at once never share partials.  Outgrown buffers stay alive (a CUDA graph that
# captured a decode step keeps pointing at them) until ``release_workspaces``; with doubling their
# sum stays below the current buffer's size.
_WORKSPACE: dict[tuple[torch.device, int], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []
_VIEWS: dict[tuple[torch.device, int, int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device, rows: int, head_dim: int, capacity: int) -> tuple[torch.Tensor, ...]:
    """fp32 partials (acc [rows, capacity, D], m and l [rows, capacity]) as views of the current
    stream's workspace buffer, which grows (doubling) when a call needs more."""
    key = (device, stream_id(device))
    views = _VIEWS.get((*key, rows, head_dim, capacity))
    if views is not None:
        return views
    slots = rows * capacity
    need = slots * (head_dim + 2)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < need:
        if buf is not None:
            _RETIRED.append(buf)
            for stale in [k for k in _VIEWS if k[:2] == key]:
                del _VIEWS[stale]
        buf = torch.empty(max(need, 2 * buf.numel() if buf is not None else need), device=device, dtype=torch.float32)
        _WORKSPACE[key] = buf
    views = (buf[: slots * head_dim], buf[slots * head_dim: slots * (head_dim + 1)], buf[slots * (head_dim + 1): need])
    _VIEWS[(*key, rows, head_dim, capacity)] = views
    return views


def release_workspaces() -> None:
    """Free the outgrown decode workspaces.  Call only when no captured CUDA graph replays a
    decode step that ran before the last growth (it would read freed memory)."""
    _RETIRED.clear()


def decode_block_m(n_q: int, group: int) -> int:
    """All N_q * group query rows of a KV head in one tile (>= 16 for tl.dot)."""
    return next_pow2(max(16, n_q * group))


def decode(
    spec: VariantSpec,
    config: dict[str, int],
    reduce: VariantSpec,
    reduce_config: dict[str, int],
    q: torch.Tensor,
    k: KV,
    v: KV,
    out: torch.Tensor,
    sm_scale: float,
    mask: torch.Tensor | None = None,
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    extra_partial: Any = None,
) -> torch.Tensor:
    """Split-K decode: grid (splits, B * H_kv) writes partials, then ``reduce`` (the decode_reduce
    variant of ``spec``, :func:`tqgen.spec.reduce_spec`) merges them.

    ``parts``: caller-owned (acc, m, l) partials of at least the cached workspace's sizes, and
    optionally a flat fp32 scratch for the Hopper path's query planes (a static cache passes its
    own so that captured graphs depend on no process-wide or per-stream buffer).
    ``extra_partial``: an :class:`~tqgen.ops.exact_tokens.ExactPartial` (exact tokens) writing
    ``extra_partial.slots`` more partials per row from slot ``num_splits`` on, merged with the
    splits'; the workspace then has that many slots more per row.  The Hopper path writes them in
    its query prologue's launch."""
    assert spec.family is Family.ATTN_DECODE
    batch, q_heads, n_q, head_dim = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    hopper = decode_sm90.supports(spec, q, k, v, mask)
    if hopper:
        block_n, policy = decode_sm90.BLOCK_N, splits.HOPPER
    else:
        block_n, policy = config["BLOCK_N"], splits.policy_of(config)
    plan = splits.split_plan(batch * kv_heads, n_kv, block_n, policy, sm_count(q.device))
    extra_slots = extra_partial.slots if extra_partial is not None else 0
    if extra_slots:
        plan = type(plan)(plan.num_splits, plan.kv_per_split, plan.capacity + extra_slots)
    rows = batch * q_heads * n_q
    part_acc, part_m, part_l = parts[:3] if parts is not None else workspace(q.device, rows, head_dim, plan.capacity)
    scratch = parts[3] if parts is not None and len(parts) > 3 else None
    pi = rotation_of(k, v)
    if hopper:
        decode_sm90.launch_partials(spec, q, k, v, sm_scale * LOG2E, plan, (part_acc, part_m, part_l), mask, scratch,
                                    extra_partial)
    else:
        margs, has_mask, is_bool = mask_args(mask, q)
        kernel(spec)[(plan.num_splits, batch * kv_heads)](
            q, *q.stride(),
            *operand_args(k, q.dtype),
            *operand_args(v, q.dtype),
            *([pi] if spec.rotate and spec.k_bits is not None else []),
            part_acc, part_m, part_l, plan.capacity,
            plan.kv_per_split,
            *margs,
            sm_scale * LOG2E,
            n_q, n_kv, kv_heads,
            HAS_MASK=has_mask, MASK_IS_BOOL=is_bool,
            BLOCK_M=decode_block_m(n_q, spec.group), BLOCK_N=block_n,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )  # fmt: skip
    if extra_partial is not None and not hopper:
        extra_partial((part_acc, part_m, part_l), plan.capacity, plan.num_splits)
    kernel(reduce)[(cdiv(rows, REDUCE_ROWS),)](
        part_acc, part_m, part_l, plan.capacity, plan.num_splits + extra_slots,
        out, *out.stride(),
        *([pi] if reduce.rotate else []),
        rows, q_heads, n_q,
        BLOCK_R=REDUCE_ROWS,
        num_warps=reduce_config["num_warps"], num_stages=reduce_config["num_stages"],
    )  # fmt: skip
    return out
