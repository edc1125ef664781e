"""The split-K policy of decode: how many pieces the KV sequence of one call is cut into.

Both decode paths (the generated Triton kernel and the Hopper Gluon kernel) run one program per
(split, batch x KV head) and write partials that ``decode_reduce`` merges.  A policy splits the
sequence only until batch x kv_heads x splits covers ``waves`` waves of SMs, and never into pieces
shorter than ``min_tokens`` keys.  The split count is a runtime integer, so one compiled kernel
serves every KV length, and the most splits a policy can pick does not depend on N_kv (so one
workspace size serves every step).

Where each path's policy comes from, all in this module:

* the Triton kernels: the launch config's ``SPLIT_MIN_TOKENS`` / ``SPLIT_WAVES`` (``policy_of``),
  whose arch defaults are ``DEFAULT`` / ``INTERPRETER`` and whose tuned values the tuner picks
  from ``search_candidates``;
* the Hopper kernel: ``HOPPER``, fixed (chosen on an H200; README "Performance").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

Config = dict[str, int]


class SplitPolicy(NamedTuple):
    """Split until ``waves`` waves of SMs are covered, each split at least ``min_tokens`` keys.
    (A tuple: the decode launcher makes one per call.)"""

    min_tokens: int
    waves: int

    def config(self) -> Config:
        """The launch-config keys that carry this policy."""
        return {"SPLIT_MIN_TOKENS": self.min_tokens, "SPLIT_WAVES": self.waves}


DEFAULT = SplitPolicy(min_tokens=128, waves=2)  # the Triton kernels on a GPU, untuned
INTERPRETER = SplitPolicy(min_tokens=64, waves=2)  # the CPU interpreter: short test sequences still split
HOPPER = SplitPolicy(min_tokens=256, waves=8)  # the Gluon kernel (tqgen.ops.decode_sm90)

# The tuner's second decode stage (tqgen.bench.tune): minimum keys per split x waves of SMs.
_SEARCH = {
    True: ((64, 256, 512), (2, 8)),  # --quick
    False: ((32, 64, 256, 512, 1024, 2048), (1, 2, 4, 8, 16)),
}


def policy_of(config: Config) -> SplitPolicy:
    """The policy a decode launch config carries (tune caches written before ``SPLIT_WAVES``
    existed lack it: they meant the default's waves)."""
    return SplitPolicy(config["SPLIT_MIN_TOKENS"], config.get("SPLIT_WAVES", DEFAULT.waves))


def search_candidates(best: Config, quick: bool) -> list[Config]:
    """``best`` (a decode config) with every policy of the search space in place of its own."""
    min_tokens, waves = _SEARCH[quick]
    return [{**best, **SplitPolicy(s, w).config()} for s, w in itertools.product(min_tokens, waves)]


def max_splits(batch_heads: int, sms: int, waves: int) -> int:
    """The most splits a policy of ``waves`` ever picks for ``batch_heads`` programs per split."""
    return max(1, _cdiv(waves * sms, batch_heads))


@dataclass(frozen=True)
class SplitPlan:
    num_splits: int
    kv_per_split: int  # a multiple of BLOCK_N
    capacity: int  # workspace slots per row (>= num_splits, independent of N_kv)


def split_plan(batch_heads: int, n_kv: int, block_n: int, policy: SplitPolicy, sms: int) -> SplitPlan:
    """The splits of one decode call: ~``policy.waves`` waves of SMs, pieces of at least
    ``policy.min_tokens`` keys (rounded up to ``block_n``), covering N_kv exactly once."""
    capacity = max_splits(batch_heads, sms, policy.waves)
    min_chunk = _cdiv(max(policy.min_tokens, 1), block_n) * block_n
    splits = max(1, min(capacity, n_kv // min_chunk))
    per_split = _cdiv(_cdiv(max(n_kv, 1), splits), block_n) * block_n
    return SplitPlan(_cdiv(max(n_kv, 1), per_split), per_split, capacity)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def capacity(batch_heads: int, sms: int, *policies: SplitPolicy) -> int:
    """Workspace slots per row that cover every split plan of ``policies`` (a call that may take
    either decode path reserves room for both)."""
    return max(max_splits(batch_heads, sms, policy.waves) for policy in policies)
