"""Exact tokens beside a compressed K/V sequence: attention sinks and a recent-token window.

A compressed cache may keep a few tokens in the model's own dtype: the first ones (attention
sinks, which draw a large share of attention and lose the most to quantisation) and the most
recent ones.  :class:`ExactTokens` carries them, and :func:`attention_with_exact` attends over
``[head exact tokens, compressed middle, tail exact tokens]`` in one call:

* decode (N_q <= 16): the split-K decode kernel (Triton, or the Hopper Gluon kernel) walks the
  compressed middle once and writes its per-split partials; :class:`ExactPartial` writes the
  exact tokens' partial into one more workspace slot (``num_splits``), in the same format (fp32
  acc in the rotated space when V is compressed, row max m and sum l in base-2 units), and the
  unchanged ``decode_reduce`` merges ``num_splits + 1`` partials.  The Triton path launches it
  after the split-K kernel; the Hopper path writes it in the launch of its query prologue
  (:func:`query_planes_and_exact_kernel`), so the exact tokens add no launch to a decode step.
* prefill (N_q > 16): the compressed middle is decompressed and the vanilla prefill kernel runs
  over the concatenation (same softmax up to rounding: decompression adds the key offset back,
  and the offset only shifts every score of a query by ``q . mu``).

Compressed keys may be stored centred (``CompressedTensor.offset`` = mu): their scores lack the
constant ``q . mu``.  The exact partial then scores ``q . (k - mu)`` so that both sides of the
log-sum-exp merge drop the same constant.  Masks and causal alignment apply to every token at
its position in the whole sequence (mask column ``j`` is token ``j`` of head + middle + tail).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from tqgen.compressed import CompressedTensor
from tqgen.gluon.query_planes import query_planes
from tqgen.spec import DECODE_MAX_Q
from tqgen.validation import FLOAT_DTYPES, check_shape, check_tensor, forward_only, wants_grad

__all__ = ["ExactPartial", "ExactTokens", "attention_with_exact", "decode_attention_exact", "exact_workspace_numel"]

LOG2E = 1.4426950408889634
BLOCK_N = 32  # exact tokens per tile
NUM_STAGES = 3  # software pipelining of a program's tile loop (H200: 3 took a 195-token window at B=32 from +14.9% to +10.1% of a decode step)


@dataclass(frozen=True)
class ExactTokens:
    """Tokens kept uncompressed beside a compressed K/V sequence.

    Attributes:
        keys, values: ``[B, H_kv, E, D]`` in the query's dtype (any strides with a unit last-dim
            stride), the raw (not centred) keys.
        n_head: how many of the E tokens come before the compressed ones (the sinks); the other
            ``E - n_head`` come after them (the recent window).  Token order in the sequence:
            ``keys[:, :, :n_head]``, then the compressed tokens, then ``keys[:, :, n_head:]``.
    """

    keys: Tensor
    values: Tensor
    n_head: int

    @property
    def count(self) -> int:
        return self.keys.shape[2]


# ------------------------------------------------------------------- kernel
@triton.jit
def exact_partial(
    pid_bh, chunk,  # b * H_kv + kv_head; which tiles_per_slot tiles of BLOCK_N exact tokens (slot slot + chunk)
    Q, stride_qb, stride_qh, stride_qm, stride_qd,  # [B, H_q, N_q, D]
    EK, stride_kb, stride_kh, stride_kn, stride_kd,  # exact keys [B, H_kv, E, D]
    EV, stride_vb, stride_vh, stride_vn, stride_vd,  # exact values [B, H_kv, E, D]
    Mu, stride_mub, stride_muh,  # fp32 key offset [B, H_kv, 1, D] (when HAS_MU)
    Pi,  # fp32 [D, D] rotation (when ROTATE): the partial's acc is acc @ Pi^T
    Part_acc, Part_m, Part_l, max_splits, slot, tiles_per_slot,  # fp32 partials [B, H_q, N_q, max_splits(, D)]
    Mask, stride_mb, stride_mh, stride_mm, stride_mn,  # over the whole sequence [B, H_q, N_q, N_total]
    qk_scale,  # sm_scale * log2(e)
    N_Q, N_HEAD, N_MID, N_EXACT, H_KV,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    HAS_MU: tl.constexpr, ROTATE: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Every query row of one KV head against ``tiles_per_slot`` tiles of BLOCK_N exact tokens
    (chunk ``chunk``), written as one split-K partial (slot ``slot + chunk``) for
    ``decode_reduce``: when few KV heads leave SMs idle, a recent window of a few hundred tokens
    takes programs side by side rather than one walking it.  The dots run on tensor cores in Q's dtype with fp32
    accumulation, as in the decode kernels; an ieee fp32 version cost 25-115 us on an H200 (CUDA
    cores), 17-80% of a long decode step."""
    b = (pid_bh // H_KV).to(tl.int64)
    kv_head = pid_bh % H_KV
    rows = tl.arange(0, BLOCK_M)  # row r -> query position r // GROUP, head r % GROUP
    q_pos = rows // GROUP
    q_head = kv_head * GROUP + rows % GROUP
    row_ok = rows < N_Q * GROUP
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    q_ptrs = Q + b * stride_qb + q_head[:, None] * stride_qh + q_pos[:, None] * stride_qm + d[None, :] * stride_qd
    dtype = Q.dtype.element_ty
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_MU:  # the compressed keys are centred: score q . k - q . mu like them
        mu = tl.load(Mu + b * stride_mub + kv_head * stride_muh + d, mask=d_ok, other=0.0)
        q_mu = tl.sum(q.to(tl.float32) * mu[None, :], 1)
    k_base = EK + b * stride_kb + kv_head * stride_kh
    v_base = EV + b * stride_vb + kv_head * stride_vh
    mask_rows = Mask + b * stride_mb + q_head * stride_mh + q_pos * stride_mm
    n_total = N_MID + N_EXACT

    # -- this program's share: BLOCK_N-token tiles [chunk * tiles_per_slot, (chunk + 1) * tiles_per_slot),
    # with an online softmax in base 2 (a row that sees no token keeps m = -inf, l = 0, acc = 0,
    # which the reduce weighs 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    first = chunk * tiles_per_slot * BLOCK_N
    last = tl.minimum(first + tiles_per_slot * BLOCK_N, N_EXACT)
    for start in range(first, last, BLOCK_N):
        e = start + tl.arange(0, BLOCK_N)
        e_ok = e < N_EXACT
        kv_ok = e_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + e[:, None] * stride_kn + d[None, :] * stride_kd, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k))
        if HAS_MU:
            s = s - q_mu[:, None]
        s = s * qk_scale
        col = tl.where(e < N_HEAD, e, e + N_MID)  # the token's position in the whole sequence
        visible = row_ok[:, None] & e_ok[None, :]
        if CAUSAL:  # bottom-right aligned over the whole sequence
            visible = visible & (col[None, :] <= (q_pos + n_total - N_Q)[:, None])
        if HAS_MASK:
            mask_tile = tl.load(mask_rows[:, None] + col[None, :] * stride_mn, mask=visible, other=0)
            if MASK_IS_BOOL:
                visible = visible & (mask_tile != 0)
            else:  # natural-log units to base 2, saturating like the decode kernels
                mask_f = mask_tile.to(tl.float32)
                mask_abs = tl.abs(mask_f)
                mask_sat = tl.minimum(mask_abs, 1.1793287458340913e38)
                mask_log2 = mask_sat * 1.4426950408889634 + (mask_abs - mask_sat) * 0.5
                s += tl.where(mask_f < 0.0, -mask_log2, mask_log2)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)
        p = tl.math.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        v = tl.load(v_base + e[:, None] * stride_vn + d[None, :] * stride_vd, mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v)
    if ROTATE:  # into the rotated space of the compressed V's partials: y = x @ Pi^T
        # Rows enter the dot scaled to max |acc| = 1 (the cast could overflow fp16) and are
        # scaled back in fp32, as decode_reduce does on the way back.
        a_max = tl.max(tl.abs(acc), 1)
        a_max = tl.where(a_max > 0.0, a_max, 1.0)
        pi_t = tl.load(Pi + d[None, :] * HEAD_DIM + d[:, None], mask=d_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot((acc / a_max[:, None]).to(dtype), pi_t.to(dtype)) * a_max[:, None]
    part = ((b * H_KV * GROUP + q_head) * N_Q + q_pos) * max_splits + slot + chunk
    tl.store(Part_m + part, m_i, mask=row_ok)
    tl.store(Part_l + part, l_i, mask=row_ok)
    tl.store(Part_acc + part[:, None] * HEAD_DIM + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["N_Q", "N_HEAD", "N_MID", "N_EXACT", "slot", "tiles_per_slot"])
def exact_partial_kernel(
    Q, stride_qb, stride_qh, stride_qm, stride_qd,  # [B, H_q, N_q, D]
    EK, stride_kb, stride_kh, stride_kn, stride_kd,  # exact keys [B, H_kv, E, D]
    EV, stride_vb, stride_vh, stride_vn, stride_vd,  # exact values [B, H_kv, E, D]
    Mu, stride_mub, stride_muh,  # fp32 key offset [B, H_kv, 1, D] (when HAS_MU)
    Pi,  # fp32 [D, D] rotation (when ROTATE): the partial's acc is acc @ Pi^T
    Part_acc, Part_m, Part_l, max_splits, slot, tiles_per_slot,  # fp32 partials [B, H_q, N_q, max_splits(, D)]
    Mask, stride_mb, stride_mh, stride_mm, stride_mn,  # over the whole sequence [B, H_q, N_q, N_total]
    qk_scale,  # sm_scale * log2(e)
    N_Q, N_HEAD, N_MID, N_EXACT, H_KV,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    HAS_MU: tl.constexpr, ROTATE: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (B * H_kv, cdiv(E, BLOCK_N)): the exact tokens' partials, a program per KV head and tile."""
    exact_partial(
        tl.program_id(0), tl.program_id(1),
        Q, stride_qb, stride_qh, stride_qm, stride_qd,
        EK, stride_kb, stride_kh, stride_kn, stride_kd,
        EV, stride_vb, stride_vh, stride_vn, stride_vd,
        Mu, stride_mub, stride_muh,
        Pi,
        Part_acc, Part_m, Part_l, max_splits, slot, tiles_per_slot,
        Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        qk_scale,
        N_Q, N_HEAD, N_MID, N_EXACT, H_KV,
        GROUP, HEAD_DIM, D_PAD, HAS_MU, ROTATE, CAUSAL, HAS_MASK, MASK_IS_BOOL, BLOCK_M, BLOCK_N,
    )  # fmt: skip


@triton.jit(do_not_specialize=["N_Q", "N_HEAD", "N_MID", "N_EXACT", "slot", "tiles_per_slot"])
def query_planes_and_exact_kernel(
    Q, stride_qb, stride_qh, stride_qm, stride_qd,  # [B, H_q, N_q, D]
    Pi_planes, Planes,  # the Hopper decode kernel's query prologue (tqgen.gluon.query_planes)
    EK, stride_kb, stride_kh, stride_kn, stride_kd,  # exact keys [B, H_kv, E, D]
    EV, stride_vb, stride_vh, stride_vn, stride_vd,  # exact values [B, H_kv, E, D]
    Mu, stride_mub, stride_muh,  # fp32 key offset [B, H_kv, 1, D] (when HAS_MU)
    Pi,  # fp32 [D, D] rotation (when ROTATE): the partial's acc is acc @ Pi^T
    Part_acc, Part_m, Part_l, max_splits, slot, tiles_per_slot,  # fp32 partials [B, H_q, N_q, max_splits(, D)]
    Mask, stride_mb, stride_mh, stride_mm, stride_mn,  # over the whole sequence [B, H_q, N_q, N_total]
    qk_scale,  # sm_scale * log2(e)
    N_Q, N_HEAD, N_MID, N_EXACT, H_KV,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    HAS_MU: tl.constexpr, ROTATE: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    M: tl.constexpr,  # query rows of the Hopper kernel's MMA (8 or 16)
):
    """Grid (B * H_kv, 2 + cdiv(E, BLOCK_N)): programs 0 and 1 write the Hopper decode kernel's
    rotated query planes (even and odd coordinates), the others the exact tokens' partials.  One launch before the
    split-K kernel instead of one on each side of it: the exact tokens then cost a decode step
    no launch of their own."""
    if tl.program_id(1) < 2:
        query_planes(tl.program_id(0), tl.program_id(1), Q, stride_qb, stride_qh, stride_qm, stride_qd,
                     Pi_planes, Planes, H_KV, N_Q, GROUP, M, HEAD_DIM)
    else:
        exact_partial(
            tl.program_id(0), tl.program_id(1) - 2,
            Q, stride_qb, stride_qh, stride_qm, stride_qd,
            EK, stride_kb, stride_kh, stride_kn, stride_kd,
        EV, stride_vb, stride_vh, stride_vn, stride_vd,
        Mu, stride_mub, stride_muh,
        Pi,
        Part_acc, Part_m, Part_l, max_splits, slot, tiles_per_slot,
        Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        qk_scale,
        N_Q, N_HEAD, N_MID, N_EXACT, H_KV,
        GROUP, HEAD_DIM, D_PAD, HAS_MU, ROTATE, CAUSAL, HAS_MASK, MASK_IS_BOOL, BLOCK_M, BLOCK_N,
        )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _lean_kernels():
    from tqgen.ops.launch import LeanKernel

    return LeanKernel(exact_partial_kernel), LeanKernel(query_planes_and_exact_kernel)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def exact_slots(count: int) -> int:
    """The most split-K partial slots ``count`` exact tokens take: one per BLOCK_N tokens (at least one)."""
    return max(1, -(-count // BLOCK_N))


@dataclass(frozen=True)
class ExactPartial:
    """The exact tokens' split-K partials of one decode call: one per ``BLOCK_N`` exact tokens
    (:func:`exact_slots`), written into consecutive slots of the partials.

    The decode launcher calls it (one launch after the split-K kernel), or, on the Hopper path,
    has the query prologue write them in its own launch (:meth:`launch_with_query_planes`).

    Attributes:
        q: the queries ``[B, H_q, N_q, D]``.
        exact: the exact tokens.
        n_mid: how many compressed tokens lie between the head and tail exact tokens.
        key_offset: the compressed keys' offset (fp32 ``[B, H_kv, 1, D]``) or None.
        rotation: fp32 Pi when V is compressed (the partial is then in the rotated space), else None.
        qk_scale: sm_scale * log2(e).
        mask: None or broadcast to ``[B, H_q, N_q, n_head + n_mid + n_tail]`` (the whole sequence).
        causal: bottom-right causal over the whole sequence.
    """

    q: Tensor
    exact: ExactTokens
    n_mid: int
    key_offset: Tensor | None
    rotation: Tensor | None
    qk_scale: float
    mask: Tensor | None
    causal: bool

    @functools.cached_property
    def slots(self) -> int:
        """Partial slots it writes (the workspace needs this many more per row): one program each
        per KV head, as many as fill the SMs the KV heads leave idle, at most one per tile."""
        from tqgen.ops.attention import sm_count

        kv_heads = self.q.shape[0] * self.exact.keys.shape[1]
        return min(exact_slots(self.exact.count), max(1, sm_count(self.q.device) // max(1, kv_heads)))

    @functools.cached_property
    def tiles_per_slot(self) -> int:
        tiles = exact_slots(self.exact.count)
        return -(-tiles // self.slots)

    def kernel_args(self, parts: tuple[Tensor, Tensor, Tensor], capacity: int, slot: int
                    ) -> tuple[list[object], dict[str, object]]:
        """The kernels' arguments after Q and its strides, and their constexprs, for writing the
        partials into slots ``slot``, ``slot + 1``, ... of ``parts`` (rows ``capacity`` slots apart)."""
        q, exact, key_offset = self.q, self.exact, self.key_offset
        batch, q_heads, n_q, head_dim = q.shape
        kv_heads = exact.keys.shape[1]
        group = q_heads // kv_heads
        ek, ev = exact.keys, exact.values
        if self.mask is None:
            margs, has_mask, is_bool = [q, 0, 0, 0, 0], False, False
        else:
            m = self.mask.view(torch.uint8) if self.mask.dtype == torch.bool else self.mask
            margs, has_mask, is_bool = [m, *m.stride()], True, self.mask.dtype == torch.bool
        mu = key_offset if key_offset is not None else q
        mu_strides = (key_offset.stride(0), key_offset.stride(1)) if key_offset is not None else (0, 0)
        pi = self.rotation if self.rotation is not None else q
        args = [
            ek, *ek.stride(),
            ev, *ev.stride(),
            mu, *mu_strides,
            pi,
            *parts, capacity, slot, self.tiles_per_slot,
            *margs,
            self.qk_scale,
            n_q, exact.n_head, self.n_mid, exact.count, kv_heads,
        ]  # fmt: skip
        constexprs = dict(
            GROUP=group, HEAD_DIM=head_dim, D_PAD=max(16, _next_pow2(head_dim)),
            HAS_MU=key_offset is not None, ROTATE=self.rotation is not None, CAUSAL=bool(self.causal),
            HAS_MASK=has_mask, MASK_IS_BOOL=is_bool,
            BLOCK_M=max(16, _next_pow2(n_q * group)), BLOCK_N=BLOCK_N,
        )  # fmt: skip
        return args, constexprs

    def __call__(self, parts: tuple[Tensor, Tensor, Tensor], capacity: int, slot: int) -> None:
        """Write the partials from slot ``slot`` on (one launch, a program per KV head and tile)."""
        args, constexprs = self.kernel_args(parts, capacity, slot)
        grid = (self.q.shape[0] * self.exact.keys.shape[1], self.slots)
        _lean_kernels()[0][grid](self.q, *self.q.stride(), *args, **constexprs, num_warps=4, num_stages=NUM_STAGES)

    def launch_with_query_planes(self, parts: tuple[Tensor, Tensor, Tensor], capacity: int, slot: int,
                                 pi_planes: Tensor, planes: Tensor, m: int) -> None:
        """The Hopper decode prologue and these partials in one launch (``query_planes_and_exact_kernel``)."""
        args, constexprs = self.kernel_args(parts, capacity, slot)
        grid = (self.q.shape[0] * self.exact.keys.shape[1], 2 + self.slots)
        _lean_kernels()[1][grid](self.q, *self.q.stride(), pi_planes, planes, *args, **constexprs, M=m,
                                 num_warps=4, num_stages=NUM_STAGES)


# ----------------------------------------------------------- the split of a call
def _middle_causal(n_q: int, n_mid: int, n_tail: int, device: torch.device) -> tuple[bool, Tensor | None]:
    """How the compressed middle sees a bottom-right causal mask over the whole sequence.

    Query i sees middle token j' iff ``j' <= i + n_mid - N_q + n_tail``: the middle kernel's own
    causal alignment when no exact token follows it; nothing hidden when at least N_q - 1 do;
    otherwise an explicit bool ``[N_q, n_mid]`` mask (returned second)."""
    if n_tail == 0:
        return True, None
    if n_tail >= n_q - 1:
        return False, None
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_mid, device=device)[None, :]
    return False, j <= i + (n_mid - n_q + n_tail)


def _combine(mask: Tensor | None, extra: Tensor | None) -> Tensor | None:
    """``mask`` (bool or additive) restricted further by the bool ``extra`` (broadcastable)."""
    if extra is None:
        return mask
    if mask is None:
        return extra
    if mask.dtype == torch.bool:
        return mask & extra
    return mask.masked_fill(~extra, float("-inf"))


def split_call(
    q: Tensor, n_mid: int, exact: ExactTokens, is_causal: bool, mask: Tensor | None
) -> tuple[bool, Tensor | None, bool, Tensor | None]:
    """(is_causal, mask) for the compressed middle and (is_causal, mask) for the exact partial,
    from a call's causal flag and its mask over the whole sequence (broadcast to 4-d)."""
    n_head, n_tail = exact.n_head, exact.count - exact.n_head
    mid_mask = None if mask is None else mask[..., n_head:n_head + n_mid]
    mid_causal = False
    if is_causal:
        mid_causal, explicit = _middle_causal(q.shape[2], n_mid, n_tail, q.device)
        mid_mask = _combine(mid_mask, explicit)
    return mid_causal, mid_mask, bool(is_causal), mask


# ----------------------------------------------------------------- checks
def check_exact(exact: object, q: Tensor, k: object) -> ExactTokens:
    """``exact`` is an :class:`ExactTokens` whose tensors match q (dtype, device, D) and k (B, H_kv)."""
    if not isinstance(exact, ExactTokens):
        raise TypeError(f"exact must be an ExactTokens, got {type(exact).__name__}")
    batch, _, _, head_dim = q.shape
    kv_heads = k.shape[1] if isinstance(k, (Tensor, CompressedTensor)) else None
    for name, t in (("exact.keys", exact.keys), ("exact.values", exact.values)):
        check_tensor(name, t, ndim=4, dtypes=FLOAT_DTYPES)
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        check_shape(name, t, (batch, kv_heads, exact.keys.shape[2], head_dim), "[B, H_kv, E, D] (k's B and H_kv)")
        if t.shape[2] and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a unit stride along its last dim, got strides {t.stride()}")
    n_head = exact.n_head
    if isinstance(n_head, bool) or not isinstance(n_head, int) or not 0 <= n_head <= exact.count:
        raise ValueError(f"exact.n_head must be an int in [0, {exact.count}] (the exact token count), got {n_head!r}")
    return exact


_MASK_DTYPES = (torch.bool, *FLOAT_DTYPES)


def _check_whole_mask(mask: object, q: Tensor, n_total: int) -> Tensor | None:
    """The mask broadcast to ``[B, H_q, N_q, n_total]`` (a view); a mask that is not one gets
    :func:`tqgen.attention.attention`'s error.  The common case is checked in Python, without
    ``torch.broadcast_shapes`` (the per-step host cost of a decode call)."""
    if mask is None:
        return None
    target = (*q.shape[:3], n_total)
    if isinstance(mask, Tensor) and 1 <= mask.dim() <= 4 and mask.dtype in _MASK_DTYPES:
        shape = (1,) * (4 - mask.dim()) + tuple(mask.shape)
        if all(a == t or a == 1 for a, t in zip(shape, target)):
            return mask[(None,) * (4 - mask.dim())].expand(target)
    from tqgen.attention import _check_mask

    return _check_mask(mask, q, n_total)


# ---------------------------------------------------------------- eager entry
def _decompressed(x: Tensor | CompressedTensor, dtype: torch.dtype) -> Tensor:
    """``x`` in the original space (keys with their offset added back), in ``dtype``."""
    if not isinstance(x, CompressedTensor):
        return x
    from tqgen.turboquant import decompress_into

    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    norms = x.norms.squeeze(-1) if x.norms.dim() == 4 else x.norms
    decompress_into(x.packed, norms, x.centroids, x.rotation, out, bits=x.bits, rotated=False)
    if x.offset is not None:
        out += x.offset.to(dtype)
    return out


def _whole(exact: ExactTokens, middle: Tensor) -> Tensor:
    return torch.cat([exact.keys[:, :, :exact.n_head], middle, exact.keys[:, :, exact.n_head:]], dim=2)


def attention_with_exact(
    q: Tensor,
    k: Tensor | CompressedTensor,
    v: Tensor | CompressedTensor,
    exact: ExactTokens,
    sm_scale: float | None = None,
    is_causal: bool = False,
    attention_mask: Tensor | None = None,
    *,
    out: Tensor | None = None,
    schedule: str = "auto",
    checked: bool = False,
) -> Tensor:
    """Attention over ``[exact head tokens, k/v (compressed or plain), exact tail tokens]``.

    Same arguments as :func:`tqgen.attention` (which calls this for ``exact=``), with
    ``attention_mask`` and ``is_causal`` over the whole sequence of ``exact.count + N_kv`` tokens.
    Decode (N_q <= 16) reads the compressed tokens once, in the split-K kernel, and the exact
    tokens in one small kernel writing one more partial; prefill decompresses the compressed
    tokens and runs the vanilla prefill kernel over the whole sequence (see the module doc).
    ``checked=True`` skips the checks of ``q`` and ``exact`` (for callers whose tensors pass them by
    construction, such as the Hugging Face backend reading its cache; ``k``/``v`` and the mask are
    still checked by :func:`tqgen.attention`).
    """
    from tqgen.attention import attention
    from tqgen.ops.attention import as_dtype

    if not isinstance(exact, ExactTokens):
        raise TypeError(f"exact must be an ExactTokens, got {type(exact).__name__}")
    if wants_grad(q, k, v, attention_mask, exact.keys, exact.values):
        return forward_only("tqgen.attention", lambda: attention_with_exact(
            q, k, v, exact, sm_scale, is_causal, attention_mask, schedule=schedule, checked=checked),
            q, k, v, attention_mask, exact.keys, exact.values, out=out)
    if not checked:
        q = check_tensor("q", q, ndim=4, dtypes=FLOAT_DTYPES)
        exact = check_exact(exact, q, k)
    if exact.count == 0:
        return attention(q, k, v, sm_scale, is_causal, attention_mask, out=out, schedule=schedule)
    n_mid = k.shape[2]
    mask = _check_whole_mask(attention_mask, q, n_mid + exact.count)
    if n_mid == 0:  # nothing compressed: the exact tokens are the whole sequence, in order
        return attention(q, exact.keys, exact.values, sm_scale, is_causal, mask, out=out, schedule=schedule)
    decode = q.shape[2] <= DECODE_MAX_Q if schedule == "auto" else schedule == "decode"
    if not decode:
        keys = _whole(exact, _decompressed(k, q.dtype))
        values = torch.cat([exact.values[:, :, :exact.n_head], _decompressed(v, q.dtype),
                            exact.values[:, :, exact.n_head:]], dim=2)
        return attention(q, keys, values, sm_scale, is_causal, mask, out=out, schedule=schedule)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    mid_causal, mid_mask, ex_causal, ex_mask = split_call(q, n_mid, exact, is_causal, mask)
    key_offset = k.offset if isinstance(k, CompressedTensor) else None
    rotation = as_dtype(v.rotation, torch.float32) if isinstance(v, CompressedTensor) else None
    if key_offset is not None:
        key_offset = as_dtype(key_offset, torch.float32)

    write = ExactPartial(q, exact, n_mid, key_offset, rotation, scale * LOG2E, ex_mask, ex_causal)
    return attention(q, k, v, sm_scale, mid_causal, mid_mask, out=out, schedule="decode", extra_partial=write)


# ------------------------------------------------- the static cache's custom op
def _workspace_layout(q: Tensor, kv_heads: int, n_kv: int, k_bits: int, v_bits: int, is_causal: bool,
                      device: torch.device, exact_tokens: int) -> tuple[object, dict[str, int], int, int, int]:
    """(spec, config, slots per row, end of the partials, start of the Hopper scratch) of a
    ``tqgen::decode_attention_exact`` call: the decode workspace's layout
    (:func:`tqgen.ops.library.decode_workspace_numel`) with the exact tokens' slots per row."""
    from tqgen.ops import library
    from tqgen.spec import Family
    from tqgen.tuning import launch_config, shape_bucket

    batch, q_heads, n_q, head_dim = q.shape
    spec = library._spec(Family.ATTN_DECODE, q, k_bits, v_bits, kv_heads, is_causal)
    config = launch_config(spec, device, shape_bucket(spec, n_q, n_kv, batch * kv_heads))
    capacity = library._split_capacity(spec, config, device, batch * kv_heads) + exact_slots(exact_tokens)
    parts_end = batch * q_heads * n_q * capacity * (head_dim + 2)
    return spec, config, capacity, parts_end, library._scratch_start(parts_end)


def exact_workspace_numel(batch: int, q_heads: int, kv_heads: int, n_q: int, head_dim: int, n_kv: int,
                          k_bits: int, v_bits: int, device: torch.device | str, is_causal: bool = False,
                          exact_tokens: int = BLOCK_N) -> int:
    """fp32 elements ``tqgen::decode_attention_exact`` needs for up to ``exact_tokens`` exact tokens:
    the decode workspace with their partial slots per row, and the Hopper path's scratch."""
    from tqgen.ops import library

    device = torch.device(device)
    q = torch.empty((batch, q_heads, n_q, head_dim), device="meta")
    spec, _, _, _, scratch_start = _workspace_layout(q, kv_heads, n_kv, k_bits, v_bits, is_causal, device,
                                                     exact_tokens)
    return scratch_start + library._scratch_numel(spec, device, batch * kv_heads)


@torch.library.custom_op("tqgen::decode_attention_exact", mutates_args=("workspace",))
def decode_attention_exact(
    q: Tensor, k: Tensor, k_norms: Optional[Tensor], k_centroids: Optional[Tensor], k_bits: int,
    v: Tensor, v_norms: Optional[Tensor], v_centroids: Optional[Tensor], v_bits: int,
    rotation: Optional[Tensor], mask: Optional[Tensor], workspace: Tensor, sm_scale: float, is_causal: bool,
    exact_k: Tensor, exact_v: Tensor, n_head: int, key_offset: Optional[Tensor],
) -> Tensor:
    """``tqgen::decode_attention`` with exact tokens (``exact_k``/``exact_v`` ``[B, H_kv, E, D]``, the
    first ``n_head`` before the compressed ``k``/``v``); ``mask`` spans the whole sequence."""
    from tqgen.ops import attention as attention_ops
    from tqgen.ops import library
    from tqgen.spec import reduce_spec
    from tqgen.tuning import launch_config

    batch, q_heads, n_q, head_dim = q.shape
    kv_heads, n_mid = k.shape[1], k.shape[2]
    if n_q > DECODE_MAX_Q:
        raise ValueError(f"tqgen::decode_attention_exact takes at most {DECODE_MAX_Q} query positions, got {n_q}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    exact = ExactTokens(exact_k, exact_v, n_head)
    whole = None if mask is None else mask[(None,) * (4 - mask.dim())].expand(*q.shape[:3], n_mid + exact.count)
    mid_causal, mid_mask, ex_causal, ex_mask = split_call(q, n_mid, exact, is_causal, whole)
    kk = library._operand("k", k, k_norms, k_centroids, k_bits, rotation, q.dtype, head_dim)
    vv = library._operand("v", v, v_norms, v_centroids, v_bits, rotation, q.dtype, head_dim)
    spec, config, capacity, parts_end, scratch_start = _workspace_layout(q, kv_heads, n_mid, k_bits, v_bits,
                                                                         mid_causal, q.device, exact.count)
    need = scratch_start + library._scratch_numel(spec, q.device, batch * kv_heads)
    if workspace.dtype != torch.float32 or workspace.dim() != 1 or workspace.numel() < need:
        raise ValueError(
            f"workspace must be a flat fp32 tensor of at least {need} elements for this call "
            f"(exact_workspace_numel), got {workspace.dtype} {tuple(workspace.shape)}"
        )
    rows = batch * q_heads * n_q
    acc_end = rows * capacity * head_dim
    parts = (workspace[:acc_end], workspace[acc_end:acc_end + rows * capacity],
             workspace[acc_end + rows * capacity:parts_end], workspace[scratch_start:need])
    scale = float(sm_scale)
    pi = rotation.to(torch.float32) if v_bits else None

    write = ExactPartial(q, exact, n_mid, key_offset, pi, scale * LOG2E, ex_mask, ex_causal)

    reduce = reduce_spec(spec)
    attention_ops.decode(spec, config, reduce, launch_config(reduce, q.device), q, kk, vv, out, scale, mid_mask,
                         parts, extra_partial=write)
    return out


@decode_attention_exact.register_fake
def _decode_attention_exact_fake(q, k, k_norms, k_centroids, k_bits, v, v_norms, v_centroids, v_bits, rotation,
                                 mask, workspace, sm_scale, is_causal, exact_k, exact_v, n_head, key_offset):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def decompress_torch(packed: Tensor, norms: Tensor, bits: int, centroids: Tensor, rotation: Tensor,
                     offset: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Decompressed vectors ``[B, H, N, D]`` in ``dtype`` from plain torch ops (``torch.compile`` traces
    them; the static cache's prefill over exact tokens uses it): ``n * c[idx] @ Pi (+ offset)``."""
    from tqgen.quant.packing import unpack

    head_dim = rotation.shape[0]
    idx = unpack(packed, bits, head_dim).long()
    values = centroids.to(torch.float32)[idx] * norms.to(torch.float32).unsqueeze(-1)
    values = values @ rotation.to(torch.float32)
    if offset is not None:
        values = values + offset.to(torch.float32)
    return values.to(dtype)
