"""Documented default launch configs, derived from an arch's limits.

Used whenever the tune cache has no entry, so ``python -m tqgen build --arch sm_89``
works on a machine without a GPU.  Rules (README "Tuning" repeats them):

* prefill: BLOCK_M query rows (query heads of a GQA group flattened in), BLOCK_N
  keys per tile.  Uncompressed V on an arch with >= 200 KB of shared memory (sm_90):
  ``HOPPER_PREFILL`` by padded head dim, the best of 9 configs at B=1 N=8192 and B=4
  N=4096, causal and not, and for 1024/4096 queries onto 32768 keys (H200, 2026-12-02).
  Otherwise 128x64 with 8 warps when the arch has >= 160 KB, D <= 128 and V is
  uncompressed, else 64x64 (64x32 for D > 128) with 4 warps; as many pipeline stages
  (2-3) as fit the shared memory.  These are sized for 2-byte K/V without a mask; a launch
  that does not fit (fp32 inputs, a mask tile per stage) steps down through
  ``smaller_prefill_config`` (fewer stages, then narrower tiles).  (Compressed V with
  BLOCK_M=128 and 8 warps gave NaN / an illegal address with Triton 3.6 on an
  H200, 2026-11-21: never a default, and the tuner skips it.)
* decode: BLOCK_N = 64 keys per tile (32 for D > 128), 4 warps, 2 stages; the split
  policy (``SPLIT_MIN_TOKENS``, ``SPLIT_WAVES``) is ``tqgen.tuning.splits.DEFAULT``: split
  until batch x kv_heads x splits fills 2 waves of SMs, each split at least 128 keys.
* compress: 64 token rows per program, 4 warps, persistent (2 programs per SM);
  decompress / scores: 32-64 token rows per program, 4 warps.
* the interpreter (``cpu``): the largest blocks, because each interpreted tile
  iteration costs milliseconds.
"""

from __future__ import annotations

from tqgen.spec import Family, VariantSpec
from tqgen.tuning import splits
from tqgen.tuning.arch import ArchLimits

Config = dict[str, int]


def next_pow2(n: int) -> int:
    """Smallest power of two >= n.  (Not imported from tqgen.codegen: that package imports
    tqgen.tuning, and ``import tqgen.tuning`` must work on its own.)"""
    return 1 << max(0, (n - 1).bit_length())


def _attention_smem(block_m: int, block_n: int, d_pad: int, stages: int) -> int:
    """Shared-memory bytes, conservatively: K and V tiles per stage plus the Q tile, 2-byte
    elements, doubled for Triton's layout-conversion buffers (D=256 with 3 stages asked for
    256 KB on an H200, 2026-11-21)."""
    return 2 * (stages * 2 * block_n * d_pad * 2 + block_m * d_pad * 2)


COMPRESS_PROGRAMS_PER_SM = 2  # persistent compress programs per SM

# (BLOCK_M, BLOCK_N, num_warps, num_stages) of plain-V prefill on sm_90, by padded head dim.
HOPPER_PREFILL = {64: (128, 64, 8, 3), 128: (128, 128, 8, 3), 256: (128, 64, 8, 2)}


def smaller_prefill_config(config: Config) -> Config | None:
    """The next prefill config to try when ``config`` needs more shared memory than the GPU has:
    one pipeline stage fewer, else half the key tile (>= 16), else half the query tile (>= 16,
    4 warps below 128 rows); None when nothing is left to shrink."""
    if config["num_stages"] > 1:
        return {**config, "num_stages": config["num_stages"] - 1}
    if config["BLOCK_N"] > 16:
        return {**config, "BLOCK_N": config["BLOCK_N"] // 2}
    if config["BLOCK_M"] > 16:
        block_m = config["BLOCK_M"] // 2
        return {**config, "BLOCK_M": block_m, "num_warps": min(config["num_warps"], 8 if block_m >= 128 else 4)}
    return None


def default_config(spec: VariantSpec, limits: ArchLimits) -> Config:
    d_pad = max(16, next_pow2(spec.head_dim))
    fam = spec.family
    if limits.interpreter:
        if fam is Family.ATTN_PREFILL:
            return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
        if fam is Family.ATTN_DECODE:
            return {"BLOCK_N": 64, **splits.INTERPRETER.config(), "num_warps": 4, "num_stages": 1}
        if fam is Family.SCORES:
            return {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
        if fam is Family.DECODE_REDUCE:
            return {"num_warps": 4, "num_stages": 1}
        if fam is Family.COMPRESS:
            return {"BLOCK_T": 64, "num_warps": 4, "num_stages": 1, "PROGRAMS_PER_SM": COMPRESS_PROGRAMS_PER_SM}
        return {"BLOCK_T": 64, "num_warps": 4, "num_stages": 1}

    if fam is Family.ATTN_PREFILL:
        if spec.v_bits is None and limits.smem_per_block >= 200 * 1024 and d_pad in HOPPER_PREFILL:
            block_m, block_n, warps, stages = HOPPER_PREFILL[d_pad]
            return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}
        big = limits.smem_per_block >= 160 * 1024 and d_pad <= 128 and spec.v_bits is None
        block_m = 128 if big else 64
        block_n = 64 if d_pad <= 128 else 32
        stages = 3
        while stages > 1 and _attention_smem(block_m, block_n, d_pad, stages) > limits.smem_per_block:
            stages -= 1
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 8 if big else 4, "num_stages": stages}
    if fam is Family.ATTN_DECODE:
        block_n = 64 if d_pad <= 128 else 32
        return {"BLOCK_N": block_n, **splits.DEFAULT.config(), "num_warps": 4, "num_stages": 2}
    if fam is Family.SCORES:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    if fam is Family.DECODE_REDUCE:
        return {"num_warps": 4, "num_stages": 1}
    if fam is Family.COMPRESS:  # persistent programs, two per SM (measured best on an H200)
        return {"BLOCK_T": 64, "num_warps": 4, "num_stages": 1, "PROGRAMS_PER_SM": COMPRESS_PROGRAMS_PER_SM}
    return {"BLOCK_T": 64 if d_pad <= 128 else 32, "num_warps": 4, "num_stages": 1}
