"""Launcher of the Hopper (sm_90) Gluon decode kernel for 4-bit K and V (``tqgen.gluon``).

``supports`` says whether a decode call can take this path; ``launch_partials`` launches the
query prologue and the main kernel, whose partials the generated ``decode_reduce`` merges.
Everything it allocates is cached per shape and stream (graph-capturable, like the Triton decode
path); the codebook tables and the permuted rotation are derived once per codebook / rotation
tensor (``tqgen.ops.derived``).

What the kernel covers: head_dim 128, 4-bit K and V sharing one symmetric codebook, fp16/bf16
queries, up to 16 query rows per KV head (N_q x GQA group), no mask or a bool key-padding mask
(the same for every head and query position: what transformers builds for a padded batch or a
static cache at N_q = 1), causal only for N_q = 1 (then every key is visible), codes with a
contiguous 64-byte row per token and contiguous norms.  Everything else takes the generated
Triton kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tqgen.compressed import CompressedTensor
from tqgen.ops import derived, stream_id
from tqgen.spec import VariantSpec

HEAD_DIM = 128
BLOCK_N = 64
STAGES = 4
# Register caps per (M, masked), read off the sm_90 SASS: 96 keeps 5 programs (20 warps) per SM
# for M = 8 without spills; with a mask, 96 makes ptxas rematerialise constants (592 instructions
# per tile instead of 534 at 104).
MAXNREG = {(8, False): 96, (8, True): 104, (16, False): None, (16, True): None}
# Its split policy is tqgen.tuning.splits.HOPPER (the decode launcher picks it).
V_SCALE = {torch.float16: 2.0**-4, torch.bfloat16: 1.0}
MAX_ROWS = 16  # query rows per KV head: the wgmma N dimension (8 or 16)


@functools.lru_cache(maxsize=None)
def _is_hopper(device: torch.device) -> bool:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return False
    try:
        import tqgen.gluon.decode_k4v4  # noqa: F401  (needs a Triton with Gluon)
    except ImportError:
        return False
    return True


def _codes_ok(x: CompressedTensor) -> bool:
    """Rows of 64 contiguous code bytes, 16-byte aligned; contiguous norms."""
    p, n = x.packed, x.norms
    if n.dim() == 4:
        n = n.squeeze(-1)
    return (
        p.stride(3) == 1 and p.stride(2) == 64 and p.data_ptr() % 16 == 0
        and p.stride(0) % 16 == 0 and p.stride(1) % 16 == 0 and n.stride(2) == 1
    )


def may_support(spec: VariantSpec, device: torch.device) -> bool:
    """Whether some call of ``spec`` on ``device`` can take this path (the variant and the GPU)."""
    return spec.k_bits == 4 and spec.v_bits == 4 and spec.head_dim == HEAD_DIM and _is_hopper(torch.device(device))


def _key_padding(mask: torch.Tensor | None, n_q: int) -> bool:
    """None, or a bool mask ``[B, H_q, N_q, N_kv]`` (a broadcast view) equal across heads and queries."""
    if mask is None:
        return True
    return mask.dtype == torch.bool and mask.stride(1) == 0 and (n_q == 1 or mask.stride(2) == 0)


def _shared_tables(k: CompressedTensor, v: CompressedTensor, dtype: torch.dtype) -> bool:
    """K and V codebooks are symmetric in ``dtype`` and give the same lookup tables."""
    tables = _tables(k.centroids, dtype)
    return tables is not None and (v.centroids is k.centroids or _tables(v.centroids, dtype) == tables)


def supports(spec: VariantSpec, q: torch.Tensor, k: Any, v: Any, mask: torch.Tensor | None) -> bool:
    """Whether this decode call can run on the Gluon kernel."""
    n_q = q.shape[2]
    return (
        may_support(spec, q.device) and _key_padding(mask, n_q)
        and (not spec.causal or n_q == 1) and n_q * spec.group <= MAX_ROWS and q.dtype in V_SCALE
        and _codes_ok(k) and _codes_ok(v) and _shared_tables(k, v, q.dtype)
    )


# -------------------------------------------------------- per-tensor derived data
def _tables(centroids: torch.Tensor, dtype: torch.dtype):
    """The lookup tables of a symmetric 16-entry codebook in ``dtype``, or None (host sync once)."""
    from tqgen.gluon import lookup

    def make():
        bits = lookup.half_bits(centroids, dtype)
        return lookup.tables(bits) if lookup.is_symmetric(bits) else None

    return derived("tables", centroids, dtype, make)


def _table_words(centroids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    def make():
        return torch.tensor(_tables(centroids, dtype).registers(), dtype=torch.int32, device=centroids.device)

    return derived("table_words", centroids, dtype, make)


def _pi_planes(rotation: torch.Tensor) -> torch.Tensor:
    """fp32 [2, D, 64]: column kk of plane p is row 2 * key_byte(kk) + p of Pi."""
    from tqgen.gluon.query_planes import key_byte

    def make():
        rows = torch.tensor([key_byte(kk) for kk in range(64)], device=rotation.device)
        pi = rotation.detach().to(torch.float32)
        return torch.stack([pi[2 * rows].T, pi[2 * rows + 1].T]).contiguous()

    return derived("pi_planes", rotation, None, make)


def derive(k_centroids: torch.Tensor, v_centroids: torch.Tensor, rotation: torch.Tensor,
           dtype: torch.dtype) -> list[torch.Tensor]:
    """Make now the values ``supports`` and ``launch_partials`` derive from the K and V codebooks
    and the rotation (``tqgen.ops.library.derive_constants``); returns the tensors among them."""
    _tables(v_centroids, dtype)
    if _tables(k_centroids, dtype) is None:
        return []
    return [_table_words(k_centroids, dtype), _pi_planes(rotation)]


@functools.lru_cache(maxsize=None)
def _kernel_sources(tables) -> tuple[str, str]:
    from tqgen.gluon import lookup

    return lookup.key_lookup_asm(tables), lookup.value_lookup_asm(tables)


_Q_PLANES: dict[tuple[torch.device, int, torch.dtype, int, int], torch.Tensor] = {}


def planes_numel(batch_heads: int) -> int:
    """fp32 elements that hold the fp16/bf16 query planes of ``batch_heads`` KV heads at any M."""
    return batch_heads * 2 * HEAD_DIM // 2 * MAX_ROWS // 2


def _q_planes(device: torch.device, dtype: torch.dtype, batch_heads: int, m: int) -> torch.Tensor:
    """[B * H_kv, 2, 64, M] query planes, cached per stream and shape (kept alive for captured
    graphs; two streams decoding at once never share them)."""
    key = (device, stream_id(device), dtype, batch_heads, m)
    if key not in _Q_PLANES:
        _Q_PLANES[key] = torch.empty((batch_heads, 2, 64, m), device=device, dtype=dtype)
    return _Q_PLANES[key]


# -------------------------------------------------------------------- the launch
def _reg_cap(m: int, masked: bool) -> dict[str, int]:
    cap = MAXNREG[(m, masked)]
    return {"maxnreg": cap} if cap else {}


@functools.lru_cache(maxsize=1)
def _kernels():
    """The prologue and main kernels, launched through cached compiled handles (``LeanKernel``)."""
    from tqgen.gluon.decode_k4v4 import k4v4_decode_sm90
    from tqgen.gluon.query_planes import rotate_query_planes
    from tqgen.ops.launch import LeanKernel

    return LeanKernel(rotate_query_planes), LeanKernel(k4v4_decode_sm90)


def launch_partials(
    spec: VariantSpec,
    q: torch.Tensor,
    k: CompressedTensor,
    v: CompressedTensor,
    qk_scale: float,
    plan,
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
    exact: Any = None,
) -> None:
    """Query prologue, then the Gluon split-K kernel writing the partials ``decode_reduce`` merges.

    ``mask``: None or a key-padding bool mask accepted by :func:`supports`.  ``scratch``: a
    caller-owned flat fp32 tensor of at least :func:`planes_numel` elements for the query planes
    (else a cached per-stream buffer).  ``exact``: an exact-token partial
    (:class:`tqgen.ops.exact_tokens.ExactPartial`) the prologue's launch writes into slot
    ``plan.num_splits``."""
    rotate_query_planes, k4v4_decode_sm90 = _kernels()
    batch, _, n_q, _ = q.shape
    kv_heads, n_kv = k.shape[1], k.shape[2]
    m = 8 if n_q * spec.group <= 8 else 16
    if scratch is None:
        planes = _q_planes(q.device, q.dtype, batch * kv_heads, m)
    else:
        planes = scratch.view(q.dtype)[: batch * kv_heads * 2 * 64 * m].view(batch * kv_heads, 2, 64, m)
    part_acc, part_m, part_l = workspace
    if exact is None:
        rotate_query_planes[(batch * kv_heads, 2)](
            q, *q.stride(), _pi_planes(k.rotation), planes, kv_heads, n_q,
            GROUP=spec.group, M=m, D=HEAD_DIM, num_warps=4,
        )  # fmt: skip
    else:
        exact.launch_with_query_planes(workspace, plan.capacity, plan.num_splits, _pi_planes(k.rotation), planes, m)
    k_lookup, v_lookup = _kernel_sources(_tables(k.centroids, q.dtype))
    kn = k.norms.squeeze(-1) if k.norms.dim() == 4 else k.norms
    vn = v.norms.squeeze(-1) if v.norms.dim() == 4 else v.norms
    v_pairs = v.packed.view(torch.int16)  # 2-byte code pairs: the kernel reads V 16 bits at a time
    keys = mask.view(torch.uint8)[:, 0, 0] if mask is not None else kn  # [B, N_kv] (kn: unused stand-in)
    k4v4_decode_sm90[(plan.num_splits, batch * kv_heads)](
        planes,
        k.packed, k.packed.stride(0), k.packed.stride(1),
        kn, kn.stride(0), kn.stride(1),
        v_pairs, v_pairs.stride(0), v_pairs.stride(1),
        vn, vn.stride(0), vn.stride(1),
        _table_words(k.centroids, q.dtype),
        part_acc, part_m, part_l, plan.capacity,
        keys, keys.stride(0), keys.stride(1),
        plan.kv_per_split, n_kv, n_q, kv_heads, qk_scale,
        GROUP=spec.group, M=m, STAGES=STAGES, K_LOOKUP=k_lookup, V_LOOKUP=v_lookup,
        V_SCALE=V_SCALE[q.dtype], HAS_MASK=mask is not None, num_warps=4, **_reg_cap(m, mask is not None),
    )  # fmt: skip
