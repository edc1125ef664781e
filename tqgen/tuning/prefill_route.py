"""How the prefill schedule attends over compressed K/V: the routing rule, in one place.

Two methods compute the same attention (up to rounding) for a compressed prefill variant:

* ``"dequant"`` (:mod:`tqgen.ops.prefill_dequant`): decompress K/V once into fp16/bf16 scratch,
  then run the vanilla (fp) prefill kernel.  Prefill is compute-bound; the fused kernel
  dequantises every K/V tile again for every query tile, so on an H200 it reached only 27-39%
  of torch SDPA while the vanilla kernel ran at 1.58x SDPA (1024 queries onto 32768 keys).
* ``"fused"``: the compressed variant's own kernel (``attn_prefill_*_k*v*_rot``), which reads
  the codes inside the attention loop and allocates nothing.

The rule (:func:`prefill_method`): a compressed prefill variant takes ``"dequant"`` on a GPU and
``"fused"`` in Triton's CPU interpreter, where there is no speed to win and the CPU test suite is
the correctness suite of the fused kernels.  Uncompressed variants have one kernel (``"fused"``:
it reads K/V as they are).  :func:`force_prefill_method` overrides the rule for tests and
benchmarks (the module-level switch), in both directions.

:func:`to_original_space` is the dequantise method's one shape choice: which side of the
rotation gets the D x D products.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

from tqgen.spec import Family, VariantSpec
from tqgen.tuning.arch import interpreting

PrefillMethod = Literal["dequant", "fused"]
METHODS: tuple[PrefillMethod, ...] = ("dequant", "fused")

_FORCED: list[PrefillMethod] = []  # the switch: innermost force_prefill_method block last


def prefill_method(spec: VariantSpec, device: torch.device) -> PrefillMethod:
    """The method a launch of prefill variant ``spec`` on ``device`` takes (see the module doc)."""
    if spec.family is not Family.ATTN_PREFILL or not spec.compressed:
        return "fused"
    if _FORCED:
        return _FORCED[-1]
    return "dequant" if device.type == "cuda" and not interpreting() else "fused"


@contextlib.contextmanager
def force_prefill_method(method: PrefillMethod) -> Iterator[None]:
    """Within the block every compressed prefill launch takes ``method`` (tests, benchmarks).

    Process-wide, not per thread; blocks nest."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _FORCED.append(method)
    try:
        yield
    finally:
        _FORCED.pop()


def to_original_space(query_vectors: int, cache_vectors: int) -> bool:
    """Whether the dequantise method decompresses compressed K and V to the original space
    (``n * c[idx] @ Pi``, the decompress kernel's tensor-core product) instead of the rotated
    space (``n * c[idx]``) plus a torch fp32 rotation of the query (``q @ Pi^T``) and of the
    output (``out_rot @ Pi``).

    Whichever side has fewer vectors takes the D x D products: ``query_vectors`` is B x H_q x N_q,
    ``cache_vectors`` B x H_kv x N_kv.  A whole prompt with GQA has ``group`` times fewer keys
    than queries (8192 tokens, 32/8 heads: the decompress un-rotates 65 k keys and 65 k values
    instead of torch rotating 262 k queries and 262 k outputs); a chunk of 1024 queries onto a
    32768-token cache has 8x fewer queries.  Ties go to the original space, which needs no extra
    pass over q or the output.
    """
    return cache_vectors <= query_vectors
