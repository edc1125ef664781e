"""Experiment: vanilla prefill (D=128, GQA group 4, causal bottom-right, no mask), two changes to the
generated kernel: the softmax scale folded into the exp2 argument (one FMA per score instead of a
multiply and a subtract), and optionally K/V tiles through TMA tensor descriptors (USE_TMA)."""
import triton
import triton.language as tl

GROUP = tl.constexpr(4)
D = tl.constexpr(128)


@triton.jit
def _tile(m_i, l_i, acc, start_n, kv_hi, q, k_base, v_base, stride_kn, stride_vn, desc_k, desc_v, kv_row0,
          d, q_pos, N_Q, N_KV, qk_scale, BLOCK_N: tl.constexpr, BOUNDARY: tl.constexpr, USE_TMA: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    if USE_TMA:
        k_tile = desc_k.load([kv_row0 + start_n, 0]).T
    else:
        if BOUNDARY:
            k_tile = tl.load(k_base + cols[None, :] * stride_kn + d[:, None], mask=(cols < kv_hi)[None, :], other=0.0)
        else:
            k_tile = tl.load(k_base + cols[None, :] * stride_kn + d[:, None])
    s = tl.dot(q, k_tile)  # raw scores; scale folded below
    if BOUNDARY:
        visible = (cols < kv_hi)[None, :] & (cols[None, :] <= (q_pos + N_KV - N_Q)[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_ref = m_new
    alpha = tl.math.exp2(m_i - m_ref)
    p = tl.math.exp2(s * qk_scale - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if USE_TMA:
        v_tile = desc_v.load([kv_row0 + start_n, 0])
        if BOUNDARY:  # rows past this head's keys belong to the next head: p is 0 there, but keep V finite
            v_tile = tl.where((cols < kv_hi)[:, None], v_tile, 0.0)
    else:
        if BOUNDARY:
            v_tile = tl.load(v_base + cols[:, None] * stride_vn + d[None, :], mask=(cols < kv_hi)[:, None], other=0.0)
        else:
            v_tile = tl.load(v_base + cols[:, None] * stride_vn + d[None, :])
    acc = tl.dot(p.to(q.dtype), v_tile, acc * alpha[:, None])
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["N_Q", "N_KV"])
def prefill_kernel(Q, stride_qb, stride_qh, stride_qm, K, stride_kb, stride_kh, stride_kn,
                   V, stride_vb, stride_vh, stride_vn, Out, stride_ob, stride_oh, stride_om,
                   desc_k, desc_v, qk_scale, N_Q, N_KV, H_KV,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_KV).to(tl.int64)
    kv_head = pid_bh % H_KV
    q_pos = rows // GROUP
    q_head = kv_head * GROUP + rows % GROUP
    row_ok = rows < N_Q * GROUP
    d = tl.arange(0, D)
    q = tl.load(Q + b * stride_qb + q_head[:, None] * stride_qh + q_pos[:, None] * stride_qm + d[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    kv_row0 = (pid_bh * N_KV).to(tl.int32)
    first_pos = (pid_m * BLOCK_M) // GROUP
    last_pos = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // GROUP, N_Q - 1)
    kv_hi = tl.minimum(last_pos + N_KV - N_Q + 1, N_KV)
    kv_full = tl.minimum(first_pos + N_KV - N_Q + 1, kv_hi)
    kv_mid = tl.maximum(kv_full, 0) // BLOCK_N * BLOCK_N
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, kv_mid, BLOCK_N):
        m_i, l_i, acc = _tile(m_i, l_i, acc, start_n, kv_hi, q, k_base, v_base, stride_kn, stride_vn, desc_k, desc_v,
                              kv_row0, d, q_pos, N_Q, N_KV, qk_scale, BLOCK_N, False, USE_TMA)
    for start_n in range(kv_mid, kv_hi, BLOCK_N):
        m_i, l_i, acc = _tile(m_i, l_i, acc, start_n, kv_hi, q, k_base, v_base, stride_kn, stride_vn, desc_k, desc_v,
                              kv_row0, d, q_pos, N_Q, N_KV, qk_scale, BLOCK_N, True, USE_TMA)
    inv_l = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(Out + b * stride_ob + q_head[:, None] * stride_oh + q_pos[:, None] * stride_om + d[None, :],
             (acc * inv_l[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None])


def launch(q, k, v, out, block_m=128, block_n=128, warps=8, stages=3, use_tma=False):
    from triton.tools.tensor_descriptor import TensorDescriptor
    B, HQ, NQ, _ = q.shape
    HKV, NKV = k.shape[1], k.shape[2]
    if use_tma:
        dk = TensorDescriptor.from_tensor(k.view(-1, 128), [block_n, 128])
        dv = TensorDescriptor.from_tensor(v.view(-1, 128), [block_n, 128])
    else:
        dk = dv = k  # unused
    grid = (triton.cdiv(NQ * 4, block_m), B * HKV)
    prefill_kernel[grid](q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
                         v, v.stride(0), v.stride(1), v.stride(2), out, out.stride(0), out.stride(1), out.stride(2),
                         dk, dv, 128 ** -0.5 * 1.4426950408889634, NQ, NKV, HKV,
                         BLOCK_M=block_m, BLOCK_N=block_n, USE_TMA=use_tma, num_warps=warps, num_stages=stages)
    return out
