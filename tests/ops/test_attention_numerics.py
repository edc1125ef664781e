"""Numerics at the edges of the dtypes: values whose products overflow fp16, masks at fp32's limit.

The kernels cast P (and the rotated output) to Q's dtype for the tensor-core dots; those casts
must never overflow where the true output fits the output dtype, and an additive mask of very
negative finite values is an ordinary mask (only -inf or all-False rows are fully masked).
"""

from __future__ import annotations

import pytest
import torch

from attention_inputs import compress_operand
from tqgen.attention import attention
from tqgen.quant import reference
from tqgen.testing import assert_close

SCHEDULES = ("decode", "prefill")


def _big_v_problem(device: str, v_scale: float, n_q: int, *, compress_k: bool = False):
    gen = torch.Generator().manual_seed(1234)
    q = torch.randn(1, 2, n_q, 128, generator=gen).half().to(device)
    k = torch.randn(1, 2, 64, 128, generator=gen).half().to(device)
    v = (torch.randn(1, 2, 64, 128, generator=gen) * v_scale).clamp(-6.0e4, 6.0e4).half()
    vc, v_ref = compress_operand(v.to(device), 4)
    kc, k_ref = compress_operand(k, 4) if compress_k else (k, k)
    return q, kc, vc, k_ref, v_ref


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("v_scale", [6000.0, 15000.0])
def test_large_value_norms_fp16(schedule: str, v_scale: float, device: str) -> None:
    """fp16 V entries up to 6e4 (norms ~7e4 to 2e5, past fp16's max 65504): finite and right."""
    q, k, vc, k_ref, v_ref = _big_v_problem(device, v_scale, n_q=2 if schedule == "decode" else 20,
                                            compress_k=schedule == "decode")
    assert vc.norms.max().item() > 65504
    out = attention(q, k, vc, schedule=schedule)
    expected = reference.reference_attention(q, k_ref, v_ref)
    assert expected.abs().max().item() < 65504  # the true output fits fp16
    assert torch.isfinite(out).all(), f"{schedule}: non-finite output"
    assert_close(out, expected, torch.float16, f"{schedule} v_scale={v_scale}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_value_norms_growing_across_tiles(schedule: str, device: str) -> None:
    """V norms from ~1 in the first tiles to ~1e5 in the last: the running V scale grows
    mid-sequence and what was accumulated before is rescaled, not lost or overflowed."""
    gen = torch.Generator().manual_seed(99)
    n = 200  # several key tiles
    q = torch.randn(1, 2, 2 if schedule == "decode" else 20, 128, generator=gen).half().to(device)
    k = torch.randn(1, 2, n, 128, generator=gen).half().to(device)
    growth = torch.logspace(-1, 3.7, n)[None, None, :, None]  # per-token scale 0.1 .. 5000
    v = (torch.randn(1, 2, n, 128, generator=gen) * growth).clamp(-6.0e4, 6.0e4).half()
    vc, v_ref = compress_operand(v.to(device), 4)
    out = attention(q, k, vc, schedule=schedule)
    expected = reference.reference_attention(q, k, v_ref)
    assert torch.isfinite(out).all(), f"{schedule}: non-finite output"
    assert_close(out, expected, torch.float16, f"{schedule} growing norms")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_large_output_fits_fp16(schedule: str, device: str) -> None:
    """Every V the same vector with entries near 4e4: the output is that vector (it fits fp16)
    though its rotated coordinates are larger; the rotation back must not overflow the cast."""
    gen = torch.Generator().manual_seed(7)
    n_q = 2 if schedule == "decode" else 20
    q = torch.randn(1, 1, n_q, 64, generator=gen).half().to(device)
    k = torch.randn(1, 1, 32, 64, generator=gen).half().to(device)
    row = torch.full((64,), 4.0e4)
    row[1::2] = -4.0e4
    v = row.expand(1, 1, 32, 64).half().to(device)
    vc, v_ref = compress_operand(v, 4)
    y = v_ref[0, 0, 0].double() @ torch.as_tensor(vc.rotation, dtype=torch.float64, device=v_ref.device).T
    assert y.abs().max().item() > 65504  # a rotated coordinate does not fit fp16
    expected = reference.reference_attention(q, k, v_ref)
    assert expected.abs().max().item() < 65504
    out = attention(q, k, vc, schedule=schedule)
    assert torch.isfinite(out).all(), f"{schedule}: non-finite output"
    assert_close(out, expected, torch.float16, schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("compressed", [False, True])
def test_mask_at_float32_min_is_not_fully_masked(schedule: str, compressed: bool, device: str) -> None:
    """A row entirely at torch.finfo(float32).min attends uniformly (the mean of V, as SDPA);
    elsewhere finfo.min entries get weight 0 next to ordinary ones."""
    gen = torch.Generator().manual_seed(99)
    n_q, n_kv = (3, 40) if schedule == "decode" else (20, 40)
    q = torch.randn(1, 2, n_q, 64, generator=gen).to(device)
    k = torch.randn(1, 2, n_kv, 64, generator=gen).to(device)
    v = torch.randn(1, 2, n_kv, 64, generator=gen).to(device)
    k_in, v_in = k, v
    if compressed:
        k_in, k = compress_operand(k, 4)
        v_in, v = compress_operand(v, 4)
    lowest = torch.finfo(torch.float32).min
    mask = torch.zeros(1, 1, n_q, n_kv)
    mask[..., 0, :] = lowest  # a whole row at the lowest float
    mask[..., 1, ::3] = lowest  # some keys at the lowest float, the rest ordinary
    mask[..., 1, 1::3] = lowest / 2  # and some half as low (weight 0 as well)
    mask = mask.to(device)
    out = attention(q, k_in, v_in, attention_mask=mask, schedule=schedule)
    expected = reference.reference_attention(q, k, v, mask=mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.double().cpu(), k.double().cpu(), v.double().cpu(), attn_mask=mask.double().cpu()
    )
    torch.testing.assert_close(expected.cpu(), sdpa)  # the oracle agrees with SDPA here
    assert_close(out[..., 0, :], v.double().mean(dim=2), torch.float32, f"{schedule}: all-lowest row")
    assert_close(out, expected, torch.float32, schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mask_minus_inf_row_still_fully_masked(schedule: str, device: str) -> None:
    """-inf stays -inf: a row of -inf outputs 0 (README's rule), even next to huge finite values."""
    gen = torch.Generator().manual_seed(5)
    n_q = 2 if schedule == "decode" else 20
    q = torch.randn(1, 1, n_q, 64, generator=gen).to(device)
    k = torch.randn(1, 1, 16, 64, generator=gen).to(device)
    v = torch.randn(1, 1, 16, 64, generator=gen).to(device)
    mask = torch.zeros(1, 1, n_q, 16)
    mask[..., 0, :] = float("-inf")
    mask[..., 1, :8] = torch.finfo(torch.float32).max  # huge positive: those keys take all the weight
    mask = mask.to(device)
    out = attention(q, k, v, attention_mask=mask, schedule=schedule)
    assert (out[..., 0, :] == 0).all()
    assert_close(out, reference.reference_attention(q, k, v, mask=mask), torch.float32, schedule)
