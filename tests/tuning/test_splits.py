"""The split-K policy of decode (``tqgen.tuning.splits``) with real SM counts."""

from __future__ import annotations

import math

import pytest

from tqgen.spec import Family, VariantSpec
from tqgen.tuning import ARCH_LIMITS, splits
from tqgen.tuning.defaults import default_config


@pytest.mark.parametrize("batch_heads,n_kv,sms", [(8, 131072, 132), (64, 32768, 132), (256, 8192, 132),
                                                  (8, 4096, 132), (1, 100, 2), (8, 1, 132), (3, 1000, 108)])
@pytest.mark.parametrize("policy", [splits.DEFAULT, splits.HOPPER], ids=["default", "hopper"])
def test_split_plan(batch_heads: int, n_kv: int, sms: int, policy: splits.SplitPolicy) -> None:
    """Splits fill ~``waves`` waves of SMs, each at least ``min_tokens`` keys, covering N_kv exactly once."""
    block_n, waves = 64, policy.waves
    plan = splits.split_plan(batch_heads, n_kv, block_n, policy, sms)
    assert plan.kv_per_split % block_n == 0
    assert 1 <= plan.num_splits <= plan.capacity == splits.max_splits(batch_heads, sms, waves)
    assert (plan.num_splits - 1) * plan.kv_per_split < n_kv <= plan.num_splits * plan.kv_per_split
    assert plan.num_splits == 1 or plan.kv_per_split >= policy.min_tokens
    assert batch_heads * plan.num_splits <= max(batch_heads, waves * sms + batch_heads)
    if n_kv >= policy.min_tokens * plan.capacity:  # long enough to fill the machine: as many splits
        shortest = math.ceil(math.ceil(n_kv / plan.capacity) / block_n) * block_n  # as BLOCK_N allows
        assert plan.kv_per_split == shortest


def test_capacity_covers_every_policy() -> None:
    for bh in (1, 8, 64, 256):
        both = splits.capacity(bh, 132, splits.DEFAULT, splits.HOPPER)
        assert both == max(splits.max_splits(bh, 132, p.waves) for p in (splits.DEFAULT, splits.HOPPER))


def test_configs_carry_the_policy() -> None:
    spec = VariantSpec(Family.ATTN_DECODE, 128, 4, 4, 4, False, True)
    assert splits.policy_of(default_config(spec, ARCH_LIMITS["sm_90"])) == splits.DEFAULT
    assert splits.policy_of(default_config(spec, ARCH_LIMITS["cpu"])) == splits.INTERPRETER
    # tune caches written before SPLIT_WAVES existed meant the default's waves
    assert splits.policy_of({"SPLIT_MIN_TOKENS": 512}) == splits.SplitPolicy(512, splits.DEFAULT.waves)


def test_search_varies_only_the_policy() -> None:
    best = {"BLOCK_N": 64, **splits.DEFAULT.config(), "num_warps": 4}
    for quick in (True, False):
        candidates = splits.search_candidates(best, quick)
        assert len({tuple(sorted(c.items())) for c in candidates}) == len(candidates) > 1
        assert all({k: v for k, v in c.items() if not k.startswith("SPLIT_")} ==
                   {"BLOCK_N": 64, "num_warps": 4} for c in candidates)
