"""Prefill over compressed K/V by dequantising first: decompress once, then the vanilla kernel.

Why: prefill is compute-bound, and the fused compressed prefill kernel
(``attn_prefill_*_k4v4_*_rot``) dequantises every K/V tile again for every query tile, so its
tensor cores wait on unpacking and codebook lookups: on an H200 (fp16, D=128, 32/8 heads) it
reached only 27-39% of torch SDPA, while the vanilla kernel on plain fp16 K/V reached 540
TFLOP/s (1.58x SDPA) for 1024 queries onto 32768 keys.  Decompressing costs one pass over the
codes and one write of K/V, paid once instead of once per query tile.

Method (the codecs name the decompress variants; the caller picks the space of K and V with
:func:`tqgen.tuning.prefill_route.to_original_space`):

1. decompress each compressed operand with the generated decompress kernel into a scratch
   tensor in q's dtype, either in the rotated space (``n * c[idx]``, a ``rotate=False`` variant)
   or in the original space (``n * c[idx] @ Pi``, a ``rotate=True`` variant);
2. rotated-space K: rotate the query, ``q_rot = q @ Pi^T`` in fp32, cast to q's dtype (the codes
   live in ``y = x @ Pi^T`` and Pi is orthogonal, so ``q . k = q_rot . k_rot``);
3. run the vanilla prefill variant ``spec`` (same head_dim, group, causal; no codes, no rotation)
   on the query and the decompressed (or plain) K/V, with the same mask, scale and bottom-right
   causal alignment, so every masking rule is the vanilla kernel's own;
4. rotated-space V: the kernel writes ``out_rot`` in fp32 and ``out = out_rot @ Pi`` (fp32) is
   cast into ``out`` (the output is linear in V: rotating it back once equals un-rotating every
   value); original-space V: the kernel writes ``out`` itself (then scaled back by the headroom
   below, in place).

fp16 headroom: a rotated coordinate of a vector that fits fp16 can exceed fp16's range (up to
its norm, sqrt(D) times its largest entry), and so can a decompressed entry near the top of the
range.  So fp16 scratch holds the vectors divided by ``FP16_HEADROOM`` = 16 = sqrt(256) >=
sqrt(D) (through the codebook, exact: a power of two), and the scale comes back exactly: in
``sm_scale`` for K, in the fp32 output rotation for rotated-space V, and as an in-place multiply
of ``out`` for original-space V.  The price is 4 bits of fp16's subnormal range: entries (and,
for original-space V, outputs) below ~1e-3 keep an absolute precision of ~1e-6.

Centred keys (``CompressedTensor.offset``, README "centred keys") need nothing: the codes hold
``k - mu``, which adds the same ``q . mu`` to every score of a query, and softmax is invariant
under adding a constant to a row (the fused kernels ignore the offset for the same reason).

Transient memory: the scratch K and V, two ``[B, H_kv, N_kv, D]`` tensors in q's dtype (one for
K-only compression), alive during the call; in the rotated space also the fp32 ``out_rot`` and
its rotation, two fp32 ``[B, H_q, N_q, D]``, and the rotated query in q's dtype with its fp32
intermediates (the caller picks the rotated space only when the query has fewer vectors than
the cache).  This is the one launcher that allocates per call; :mod:`tqgen.attention` checks its
inputs.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from tqgen.compressed import CompressedTensor
from tqgen.ops import attention as attention_ops
from tqgen.ops import decompress as decompress_ops
from tqgen.ops import derived
from tqgen.spec import Family, VariantSpec

KV = Union[torch.Tensor, CompressedTensor]
Codec = Optional[tuple[VariantSpec, dict[str, int]]]  # (decompress variant, its config); None: plain

FP16_HEADROOM = 16.0  # fp16 scratch holds x / 16: |n * c| <= n <= sqrt(256) * max |x| fits (see above)


def prefill(
    spec: VariantSpec,
    config: dict[str, int],
    k_codec: Codec,
    v_codec: Codec,
    q: torch.Tensor,
    k: KV,
    v: KV,
    out: torch.Tensor,
    sm_scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q over K/V (plain or compressed) through decompression and the vanilla kernel.

    ``spec``/``config``: the vanilla prefill variant and its launch config.  ``k_codec``/``v_codec``:
    the decompress variant and config of a compressed K/V (``None`` when plain); a ``rotate=False``
    (rotated-space) variant brings the query rotation (K) or the output rotation (V) with it.
    Returns ``out``.
    """
    assert spec.family is Family.ATTN_PREFILL and not spec.compressed and not spec.rotate
    headroom = FP16_HEADROOM if q.dtype == torch.float16 else 1.0
    pi = attention_ops.rotation_of(k, v)  # fp32 Pi (cached); K and V share it
    k_hat = _dequantise(k, k_codec, q.dtype, headroom)
    v_hat = _dequantise(v, v_codec, q.dtype, headroom)
    if k_codec is not None:
        sm_scale = sm_scale * headroom
        if not k_codec[0].rotate:
            q = torch.matmul(q.float(), pi.T).to(q.dtype)  # y = q @ Pi^T
    if v_codec is None or v_codec[0].rotate:  # plain or original-space values: out is the kernel's
        attention_ops.prefill(spec, config, q, k_hat, v_hat, out, sm_scale, mask)
        return out if v_codec is None or headroom == 1.0 else out.mul_(headroom)  # exact: a power of two
    target = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    attention_ops.prefill(spec, config, q, k_hat, v_hat, target, sm_scale, mask)
    # back from the rotated space (and the headroom): out = out_rot @ (headroom * Pi)
    scaled = pi if headroom == 1.0 else derived("headroom_pi", pi, headroom, lambda: pi * headroom)
    out.copy_(torch.matmul(target, scaled))
    return out


def _dequantise(x: KV, codec: Codec, dtype: torch.dtype, headroom: float) -> KV:
    """The operand as a plain ``[B, H_kv, N_kv, D]`` tensor in ``dtype`` (divided by ``headroom``
    when it was compressed)."""
    if codec is None:
        return x
    dspec, dconfig = codec
    assert dspec.family is Family.DECOMPRESS and dspec.k_bits == x.bits
    c = x.centroids
    centroids = derived("headroom_centroids", c, headroom, lambda: c.to(torch.float32) / headroom)
    norms = x.norms.squeeze(-1) if x.norms.dim() == 4 else x.norms
    hat = torch.empty(x.shape, dtype=dtype, device=x.device)
    return decompress_ops.decompress(dspec, dconfig, x.packed, norms, centroids, x.rotation, hat)
