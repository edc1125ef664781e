"""The query prologue of the Hopper decode kernel: rotated query planes in the K unpack order.

A plain Triton kernel (it runs in the CPU interpreter too), kept apart from the Gluon module.
"""

import triton
import triton.language as tl


def key_byte(kk: int) -> int:
    """Byte (plane position) of a K vector that the decode kernel's MMA reduction index ``kk``
    reads: its registers hold bytes ``j = 16q + 4c + 2h + p`` at ``kk = 16c + 8h + 2q + p``."""
    c, h, q, p = kk >> 4, (kk >> 3) & 1, (kk >> 1) & 3, kk & 1
    return 16 * q + 4 * c + 2 * h + p


@triton.jit
def query_planes(
    bh, plane,  # b * H_kv + kv_head; 0 (even coordinates) or 1 (odd)
    Q, stride_qb, stride_qh, stride_qm, stride_qd,  # [B, H_q, N_q, D]
    Pi_planes,  # fp32 [2, D, 64]: column kk of plane p is row 2 * key_byte(kk) + p of Pi
    Out,  # [B * H_kv, 2, 64, M] in Q's dtype: the B operands Q_even^T, Q_odd^T
    H_KV, N_Q,
    GROUP: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
):
    """y = q @ Pi^T for the N_Q * GROUP query rows of one KV head and one plane (even or odd
    coordinates, in the K unpack order), transposed and zero-padded to M rows."""
    b = (bh // H_KV).to(tl.int64)
    kv_head = bh % H_KV
    rows = tl.arange(0, 16)  # tl.dot needs 16 rows; rows >= N_Q * GROUP are zero
    row_ok = rows < N_Q * GROUP
    q_rows = Q + b * stride_qb + (kv_head * GROUP + rows % GROUP) * stride_qh + (rows // GROUP) * stride_qm
    d = tl.arange(0, D)
    q = tl.load(q_rows[:, None] + d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0).to(tl.float32)
    kk = tl.arange(0, 64)
    pi = tl.load(Pi_planes + plane * D * 64 + d[:, None] * 64 + kk[None, :])
    y = tl.dot(q, pi, input_precision="tf32x3")  # fp32-accurate on tensor cores
    out = Out + ((bh * 2 + plane) * 64 + kk[None, :]) * M + rows[:, None]
    tl.store(out, y.to(Out.dtype.element_ty), mask=(rows < M)[:, None])


@triton.jit
def rotate_query_planes(
    Q, stride_qb, stride_qh, stride_qm, stride_qd,  # [B, H_q, N_q, D]
    Pi_planes,  # fp32 [2, D, 64]
    Out,  # [B * H_kv, 2, 64, M]
    H_KV, N_Q,
    GROUP: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
):
    """Grid (B * H_kv, 2): the query planes of every KV head (:func:`query_planes`)."""
    query_planes(tl.program_id(0), tl.program_id(1), Q, stride_qb, stride_qh, stride_qm, stride_qd,
                 Pi_planes, Out, H_KV, N_Q, GROUP, M, D)
