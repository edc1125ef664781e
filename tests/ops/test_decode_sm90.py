"""The Hopper (sm_90) Gluon decode path: which calls take it, and (on an H100/H200) its results
against the float64 reference for fp16 and bf16, masks, lengths off the tile, every GQA group."""

from __future__ import annotations

import pytest
import torch

from attention_inputs import make_problem, random_length
from tqgen.ops import attention as attention_ops
from tqgen.ops import decode_sm90
from tqgen.spec import Family, VariantSpec
from tqgen.tuning import splits

SPEC = VariantSpec(Family.ATTN_DECODE, 128, 4, 4, 4, False, True)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def test_key_padding_masks_only() -> None:
    keep = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    assert decode_sm90._key_padding(None, 1)
    assert decode_sm90._key_padding(keep.expand(2, 8, 1, 50), 1)
    assert not decode_sm90._key_padding(torch.ones(2, 8, 1, 50, dtype=torch.bool), 1)  # per head
    assert not decode_sm90._key_padding(torch.zeros(2, 1, 1, 50).expand(2, 8, 1, 50), 1)  # additive


def test_never_taken_off_hopper() -> None:
    problem = make_problem(n_q=1, n_kv=10, head_dim=128, group=4, k_bits=4, v_bits=4, device="cpu")
    assert not decode_sm90.supports(SPEC, problem.q, problem.k, problem.v, None)


def test_split_capacity_covers_both_policies() -> None:
    config = splits.DEFAULT.config()
    for bh in (1, 8, 64, 256):
        cap = attention_ops.split_capacity(SPEC, config, torch.device("cpu"), bh)
        assert cap == splits.max_splits(bh, attention_ops.sm_count(torch.device("cpu")), 2)  # the CPU never takes sm_90


gpu = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs an H100/H200")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 2, 4, 8, 16])
def test_gluon_decode_matches_float64(dtype: torch.dtype, group: int) -> None:
    n = random_length(1, 3000)
    problem = make_problem(n_q=1, n_kv=n, head_dim=128, group=group, kv_heads=2, batch=2, k_bits=4, v_bits=4,
                           dtype=dtype, device="cuda")
    spec = VariantSpec(Family.ATTN_DECODE, 128, 4, 4, group, False, True)
    assert decode_sm90.supports(spec, problem.q, problem.k, problem.v, None)
    problem.check(name=f"gluon {dtype} group {group} n {n}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n_q,group,causal", [(2, 4, False), (4, 4, False), (1, 8, True)])
def test_gluon_decode_query_rows(n_q: int, group: int, causal: bool) -> None:
    problem = make_problem(n_q=n_q, n_kv=random_length(64, 700), head_dim=128, group=group, kv_heads=2,
                           k_bits=4, v_bits=4, device="cuda")
    problem.check(causal, name=f"n_q {n_q} group {group}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gluon_decode_key_padding_mask(dtype: torch.dtype) -> None:
    n = random_length(300, 5000)
    problem = make_problem(n_q=1, n_kv=n, head_dim=128, group=4, kv_heads=2, batch=3, k_bits=4, v_bits=4,
                           dtype=dtype, device="cuda")
    keep = torch.rand(3, 1, 1, n, device="cuda") > 0.3
    keep[0, ..., n // 4:] = False  # whole splits of sequence 0 see no key
    keep[..., 0] = True
    problem.check(mask=keep, name=f"gluon mask {dtype} n {n}")
