"""Split-K decode over 4-bit K and V codes for Hopper (sm_90), written in Gluon.

The portable Triton kernel (``templates/attention.py.j2``) puts the query rows in the MMA's M
dimension; with a handful of query rows per KV head most of each 64-row tensor-core tile is
padding, and the unpacked K/V tiles make a round trip through shared memory.  This kernel swaps
the operands so that the 64 tokens of a tile are the M dimension and the query rows of a KV head
(padded to 8 or 16, the constexpr ``M``) are the N dimension (``wgmma m64n8k16`` / ``m64n16k16``):

    S^T [tokens, rows] = K_hat [tokens, coords] @ Q_rot^T [coords, rows]      (A = K_hat, registers)
    O^T [coords, rows] += V_hat^T [coords, tokens] @ P^T [tokens, rows]         (A = V_hat^T, registers)

K_hat and V_hat are never materialised: each thread loads its packed codes from shared memory
straight into the registers the MMA's A operand occupies and turns them into fp16/bf16 with the
byte-permute lookups of :mod:`tqgen.gluon.lookup` (the codebook is symmetric: 8 magnitudes and a
sign).  Only Q_rot (once) and P^T (per tile, [64, M]) go through shared memory as the B operand.

Stages of one program (split ``s`` of KV head ``b * H_kv + h``):

1. prologue: the rotated query planes Q_even^T, Q_odd^T (written by ``rotate_query_planes``)
   into shared memory;
2. a ring of ``STAGES`` shared-memory slots fed by ``cp.async``: packed K codes [64, 64] bytes,
   V codes [64, 32] 16-bit pairs, K and V norms [2, 64]; tile ``i + STAGES - 1`` is in flight
   while tile ``i`` is computed;
3. per tile: unpack K -> S^T -> (key-padding mask, read one tile ahead, when ``HAS_MASK``) ->
   fp32 online softmax in base 2 over the tokens (row sums kept per element and reduced once at
   the end) -> P^T * n_v to shared memory -> unpack V -> O^T;
4. epilogue: fp32 partials (m, l, O at the rotated-space coordinates) in the layout the generated
   ``decode_reduce`` kernel merges and rotates back.

Coordinate orders.  The A-operand layout fixes which code each register holds; the loads are
chosen so that no data moves between threads, which permutes coordinates inside a plane:

* K: thread registers hold 16 consecutive code bytes ``j`` of a token; in the MMA's reduction
  index ``kk = 16c + 8h + 2q + p`` they are bytes ``j = 16q + 4c + 2h + p`` (:func:`key_byte`).
  The query planes are written in this order, so the dot products are unchanged.
* V: rows ``jl = 16a + 8w + b`` of O^T hold bytes ``j = 16a + 2b + w`` (:func:`value_byte`); the
  epilogue stores each row at its real coordinate ``2j`` (even plane) or ``2j + 1`` (odd plane).

fp16 range: ``P * n_v`` is cast to the MMA dtype, and a norm can exceed fp16's range (entries up
to 65504 give norms up to 65504 * sqrt(D)).  For fp16 the norms are scaled by ``V_SCALE = 2^-4``
(exact, a power of two) and the partials by ``2^4`` in fp32, which covers every vector whose
entries fit fp16 at D <= 256.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

from tqgen.gluon.query_planes import key_byte  # noqa: F401  (the K order, shared with the prologue)


HEAD_DIM = gl.constexpr(128)
BLOCK_N = gl.constexpr(64)  # tokens per tile: the wgmma M dimension
CODE_BYTES = gl.constexpr(64)  # 4-bit codes of one vector


def value_byte(jl: int) -> int:
    """Byte (plane position) of a V vector that O^T row ``jl`` accumulates."""
    a, w, b = jl >> 4, (jl >> 3) & 1, jl & 7
    return 16 * a + 2 * b + w


# ------------------------------------------------------------------ the main kernel
@gluon.jit
def _issue_tile(k_slot, v_slot, n_slot, k_src, v_src, n_src, k_tok, v_tok, n_tok, start, kv_hi,
                MASKED: gl.constexpr):
    """cp.async one tile of K codes, V codes and both norms into one ring slot."""
    if MASKED:  # the last tile of the split: tokens past kv_hi read as zeros
        async_copy.async_copy_global_to_shared(k_slot, k_src + start * CODE_BYTES, mask=(start + k_tok < kv_hi)[:, None])
        async_copy.async_copy_global_to_shared(v_slot, v_src + start * (CODE_BYTES // 2), mask=(start + v_tok < kv_hi)[:, None])
        async_copy.async_copy_global_to_shared(n_slot, n_src + start, mask=(start + n_tok < kv_hi)[None, :])
    else:
        async_copy.async_copy_global_to_shared(k_slot, k_src + start * CODE_BYTES)
        async_copy.async_copy_global_to_shared(v_slot, v_src + start * (CODE_BYTES // 2))
        async_copy.async_copy_global_to_shared(n_slot, n_src + start)


@gluon.jit
def _issue(k_smem, v_smem, n_smem, k_src, v_src, n_src, k_tok, v_tok, n_tok, tile, lo, kv_hi, n_full, n_tiles,
           STAGES: gl.constexpr):
    slot = tile % STAGES
    if tile < n_full:
        _issue_tile(k_smem.index(slot), v_smem.index(slot), n_smem.index(slot), k_src, v_src, n_src,
                    k_tok, v_tok, n_tok, lo + tile * BLOCK_N, kv_hi, False)
    elif tile < n_tiles:
        _issue_tile(k_smem.index(slot), v_smem.index(slot), n_smem.index(slot), k_src, v_src, n_src,
                    k_tok, v_tok, n_tok, lo + tile * BLOCK_N, kv_hi, True)


@gluon.jit(do_not_specialize=["kv_per_split", "N_KV"])
def k4v4_decode_sm90(
    Q_planes,  # [B * H_kv, 2, 64, M] fp16/bf16 from rotate_query_planes
    K_codes, stride_kb, stride_kh,  # uint8 [B, H_kv, N_kv, 64], token stride 64
    K_norms, stride_knb, stride_knh,  # fp32 [B, H_kv, N_kv], token stride 1
    V_codes, stride_vb, stride_vh,  # int16 view of uint8 [B, H_kv, N_kv, 64], token stride 32
    V_norms, stride_vnb, stride_vnh,  # fp32 [B, H_kv, N_kv], token stride 1
    Tables,  # int32 [2]: the lookup's register table words lo0, hi0
    Part_acc, Part_m, Part_l, max_splits,  # fp32 partials [B * H_q * N_q, max_splits(, D)]
    Mask, stride_mb, stride_mn,  # uint8 key-padding mask [B, N_kv] (1 = attend), when HAS_MASK
    kv_per_split, N_KV, N_Q, H_KV, qk_scale,
    GROUP: gl.constexpr, M: gl.constexpr, STAGES: gl.constexpr,
    K_LOOKUP: gl.constexpr, V_LOOKUP: gl.constexpr, V_SCALE: gl.constexpr, HAS_MASK: gl.constexpr,
):
    gl.static_assert(gl.num_warps() == 4, "one warpgroup")
    dtype: gl.constexpr = Q_planes.dtype.element_ty
    split = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = (pid_bh // H_KV).to(gl.int64)
    kv_head = (pid_bh % H_KV).to(gl.int64)

    # -- layouts
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, M, 16])
    a_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    # K codes in registers: 16 consecutive bytes of tokens t and t + 8 per thread (one 128-bit load each)
    k_regs: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [8, 0]],
        lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[BLOCK_N, CODE_BYTES])
    # V codes as 16-bit byte pairs: one pair column of tokens (t, t + 1) per register, the order
    # of the A operand of O^T (tokens are its reduction dimension)
    v_regs: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[1, 0], [8, 0], [16, 0], [32, 0]],
        lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
        warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[BLOCK_N, CODE_BYTES // 2])
    v_copy: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])  # 16 bytes per cp.async
    n_copy: gl.constexpr = gl.BlockedLayout([1, 1], [1, 32], [2, 2], [1, 0])  # [2, BLOCK_N] norms
    q_copy: gl.constexpr = gl.BlockedLayout([1, 1], [32 // M, M], [4, 1], [1, 0])
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    # V rows are read 2 bytes at a time from 4 token rows per warp: xor-swizzle the 16-byte
    # chunks by (row / 2) % 4 so those rows land in different banks
    v_swizzled: gl.constexpr = gl.SwizzledSharedLayout(8, 2, 4, [1, 0])
    b_operand: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, M], dtype)

    # -- 1. prologue: the query planes, the ring, the lookup tables
    qd = gl.arange(0, 64, layout=gl.SliceLayout(1, q_copy))
    qm = gl.arange(0, M, layout=gl.SliceLayout(0, q_copy))
    q_src = Q_planes + pid_bh.to(gl.int64) * 2 * 64 * M + qd[:, None] * M + qm[None, :]
    q_even = gl.allocate_shared_memory(dtype, [64, M], b_operand, gl.load(q_src))
    q_odd = gl.allocate_shared_memory(dtype, [64, M], b_operand, gl.load(q_src + 64 * M))
    p_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, M], b_operand)
    k_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, CODE_BYTES], plain)
    v_smem = gl.allocate_shared_memory(gl.int16, [STAGES, BLOCK_N, CODE_BYTES // 2], v_swizzled)
    n_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 2, BLOCK_N], plain)
    norm_rows = n_smem._reinterpret(gl.float32, [2 * STAGES, BLOCK_N], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    fence_async_shared()

    k_tok = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, k_regs))
    k_src = (K_codes + b * stride_kb + kv_head * stride_kh
             + k_tok[:, None] * CODE_BYTES + gl.arange(0, CODE_BYTES, layout=gl.SliceLayout(0, k_regs))[None, :])
    v_tok = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, v_copy))
    v_src = (V_codes + b * stride_vb + kv_head * stride_vh
             + v_tok[:, None] * (CODE_BYTES // 2) + gl.arange(0, CODE_BYTES // 2, layout=gl.SliceLayout(0, v_copy))[None, :])
    n_tok = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, n_copy))
    is_k = (gl.arange(0, 2, layout=gl.SliceLayout(1, n_copy)) == 0)[:, None]
    n_src = gl.where(is_k, K_norms + b * stride_knb + kv_head * stride_knh + n_tok[None, :],
                     V_norms + b * stride_vnb + kv_head * stride_vnh + n_tok[None, :])

    # table words as loaded values: held in two registers for the whole kernel
    lo0 = gl.load(Tables)
    hi0 = gl.load(Tables + 1)
    k_lo0 = gl.zeros([BLOCK_N, CODE_BYTES], gl.int32, k_regs) + lo0
    k_hi0 = gl.zeros([BLOCK_N, CODE_BYTES], gl.int32, k_regs) + hi0
    v_lo0 = gl.zeros([BLOCK_N, CODE_BYTES // 2], gl.int32, v_regs) + lo0
    v_hi0 = gl.zeros([BLOCK_N, CODE_BYTES // 2], gl.int32, v_regs) + hi0

    lo = split * kv_per_split
    kv_hi = gl.minimum(lo + kv_per_split, N_KV)
    n_full = (kv_hi - lo) // BLOCK_N
    n_tiles = (kv_hi - lo + BLOCK_N - 1) // BLOCK_N
    for t in gl.static_range(STAGES - 1):
        _issue(k_smem, v_smem, n_smem, k_src, v_src, n_src, k_tok, v_tok, n_tok, t, lo, kv_hi, n_full, n_tiles, STAGES)
        async_copy.commit_group()

    m_i = gl.full([M], float("-inf"), gl.float32, layout=gl.SliceLayout(0, mma))  # running max (base 2)
    l_acc = gl.zeros([BLOCK_N, M], gl.float32, layout=mma)  # softmax sums, reduced once at the end
    acc_even = gl.zeros([64, M], gl.float32, layout=mma)  # O^T, even coordinates (rows jl)
    acc_odd = gl.zeros([64, M], gl.float32, layout=mma)
    s_tok = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    if HAS_MASK:  # one tile ahead in registers: the load of tile i + 1 overlaps tile i's work
        mask_rows = Mask + b * stride_mb + s_tok * stride_mn
        mask_next = gl.load(mask_rows + lo * stride_mn, mask=lo + s_tok < kv_hi, other=0)

    for tile in range(n_tiles):
        # -- 2. the ring: wait for this tile, refill the slot the previous tile used
        async_copy.wait_group(STAGES - 2)
        gl.thread_barrier()
        _issue(k_smem, v_smem, n_smem, k_src, v_src, n_src, k_tok, v_tok, n_tok, tile + STAGES - 1,
               lo, kv_hi, n_full, n_tiles, STAGES)
        async_copy.commit_group()
        slot = tile % STAGES
        k_codes = k_smem.index(slot).load(k_regs)
        v_codes = v_smem.index(slot).load(v_regs)
        k_norm = norm_rows.index(2 * slot).load(gl.SliceLayout(1, mma))
        v_norm = norm_rows.index(2 * slot + 1).load(gl.SliceLayout(1, mma))
        if HAS_MASK:
            visible = mask_next != 0  # False past kv_hi too
            start_next = lo + (tile + 1) * BLOCK_N
            mask_next = gl.load(mask_rows + start_next * stride_mn, mask=start_next + s_tok < kv_hi, other=0)

        # -- 3a. S^T = K_hat Q_rot^T: codes -> values of the even / odd coordinates -> A operand
        k_even, k_odd = gl.inline_asm_elementwise(
            K_LOOKUP, "=r,=r,=r,=r,r" + ",r" * 8, [k_codes, k_lo0, k_hi0],
            dtype=(Q_planes.dtype.element_ty, Q_planes.dtype.element_ty), is_pure=True, pack=4)
        k_even = gl.convert_layout(_key_operand_order(k_even), a_operand, assert_trivial=True)
        k_odd = gl.convert_layout(_key_operand_order(k_odd), a_operand, assert_trivial=True)
        s = warpgroup_mma(k_even, q_even, gl.zeros([BLOCK_N, M], gl.float32, layout=mma), use_acc=False)
        s = warpgroup_mma(k_odd, q_odd, s)
        s = s * (k_norm * qk_scale)[:, None]  # <q, n_k c[idx]> in base-2 logits
        if HAS_MASK:
            s = gl.where(visible[:, None], s, float("-inf"))
        elif tile >= n_full:
            s = gl.where((lo + tile * BLOCK_N + s_tok < kv_hi)[:, None], s, float("-inf"))

        # -- 3b. online softmax over the tile's tokens
        m_new = gl.maximum(m_i, gl.max(s, 0))
        if HAS_MASK:  # a split may see no visible key yet: keep m = -inf and p = 0, not NaN
            m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        alpha = gl.exp2(m_i - m_ref)
        p = gl.exp2(s - m_ref[None, :])
        l_acc = l_acc * alpha[None, :] + p
        m_i = m_new

        # -- 3c. O^T += V_hat^T (P * n_v)^T, P^T through shared memory as the B operand
        p_smem.store((p * (v_norm * V_SCALE)[:, None]).to(dtype))
        fence_async_shared()
        e_c, e_c1, o_c, o_c1 = gl.inline_asm_elementwise(
            V_LOOKUP, "=r,=r,=r,=r,r" + ",r" * 4, [v_codes, v_lo0, v_hi0],
            dtype=(Q_planes.dtype.element_ty,) * 4, is_pure=True, pack=2)
        v_even = gl.convert_layout(_value_operand_order(e_c, e_c1), a_operand, assert_trivial=True)
        v_odd = gl.convert_layout(_value_operand_order(o_c, o_c1), a_operand, assert_trivial=True)
        acc_even = warpgroup_mma(v_even, p_smem, acc_even * alpha[None, :])
        acc_odd = warpgroup_mma(v_odd, p_smem, acc_odd * alpha[None, :])
    async_copy.wait_group(0)

    # -- 4. epilogue: partials for decode_reduce, rows r = q_pos * GROUP + g
    l_i = gl.sum(l_acc, 0)
    r = gl.arange(0, M, layout=gl.SliceLayout(0, mma))
    row_ok = r < N_Q * GROUP
    part = ((pid_bh * GROUP + r % GROUP) * N_Q + r // GROUP) * max_splits + split
    gl.store(Part_m + part, m_i, mask=row_ok)
    gl.store(Part_l + part, l_i, mask=row_ok)
    jl = gl.arange(0, 64, layout=gl.SliceLayout(1, mma))
    coord = 2 * (16 * (jl // 16) + 2 * (jl % 8) + (jl // 8) % 2)  # 2 * value_byte(jl)
    out = Part_acc + part.to(gl.int64)[None, :] * HEAD_DIM + coord[:, None]
    gl.store(out, acc_even * (1.0 / V_SCALE), mask=row_ok[None, :])
    gl.store(out + 1, acc_odd * (1.0 / V_SCALE), mask=row_ok[None, :])


@gluon.jit
def _key_operand_order(x):
    """[tokens, byte j] -> [tokens, kk]: byte j = 16q + 4c + 2h + p sits at kk = 16c + 8h + 2q + p."""
    x = gl.reshape(x, [BLOCK_N, 4, 4, 2, 2])
    return gl.reshape(gl.permute(x, (0, 2, 3, 1, 4)), [BLOCK_N, 64])


@gluon.jit
def _value_operand_order(x_c, x_c1):
    """Values of bytes (c, c + 1) of [tokens, 32] pairs -> V_hat^T [jl, tokens]: byte
    j = 16a + 2b + w sits at row jl = 16a + 8w + b."""
    x = gl.permute(gl.reshape(gl.join(x_c, x_c1), [BLOCK_N, 64]), (1, 0))  # [byte j, tokens]
    x = gl.permute(gl.reshape(x, [4, 8, 2, BLOCK_N]), (0, 2, 1, 3))
    return gl.reshape(x, [64, BLOCK_N])
