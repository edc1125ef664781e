"""The public attention API: seed-compatible wrappers, dispatch, ``out=`` and edge sizes."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from tqgen.compressed import CompressedTensor
from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix
from tqgen.spec import Family, VariantSpec
from tqgen.testing import assert_close, poison_

# the module, even if the package re-exports a function of the same name
api = importlib.import_module("tqgen.attention")


def _compressed(x: torch.Tensor, bits: int):
    """(packed, norms [B, H, N, 1], centroids, rotation, decompressed fp64) of ``x``."""
    d = x.shape[-1]
    codebook = lloyd_max_codebook(d, bits).to(x.device)
    rotation = rotation_matrix(d, device=x.device)
    packed, norms = reference.compress(x.float(), bits, rotation, codebook)
    decoded = reference.decompress(packed, norms, bits, d, rotation, codebook, dtype=torch.float64)
    return packed, norms.unsqueeze(-1), codebook.centroids, rotation, decoded


def _qkv(device: str, b=2, hq=4, hkv=2, nq=3, nkv=40, d=64):
    return (torch.randn(b, hq, nq, d, device=device, dtype=torch.float16),
            torch.randn(b, hkv, nkv, d, device=device, dtype=torch.float16),
            torch.randn(b, hkv, nkv, d, device=device, dtype=torch.float16))


@pytest.mark.parametrize("n_q", [1, 20])
def test_triton_flash_attention(n_q: int, device: str) -> None:
    q, k, v = _qkv(device, nq=n_q)
    mask = torch.randn(2, 1, n_q, 40, device=device)
    out = api.triton_flash_attention(q, k, v, sm_scale=0.2, is_causal=True, attention_mask=mask)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close(out, reference.reference_attention(q, k, v, 0.2, True, mask), torch.float16)


@pytest.mark.parametrize("n_q", [1, 20])
def test_triton_flash_attention_tq4(n_q: int, device: str) -> None:
    q, k, v = _qkv(device, nq=n_q)
    packed, norms, centroids, rotation, k_ref = _compressed(k, 4)
    out = api.triton_flash_attention_tq4(q, packed, norms, centroids, rotation, v, is_causal=True)
    assert_close(out, reference.reference_attention(q, k_ref, v, None, True), torch.float16)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_triton_flash_attention_tq4_kv(bits: int, device: str) -> None:
    """The width follows from centroids.numel(); norms may be [B, H, N] or [..., 1]."""
    q, k, v = _qkv(device, nq=18)
    k_packed, k_norms, centroids, rotation, k_ref = _compressed(k, bits)
    v_packed, v_norms, _, _, v_ref = _compressed(v, bits)
    out = api.triton_flash_attention_tq4_kv(q, k_packed, k_norms, v_packed, v_norms.squeeze(-1), centroids, rotation)
    assert_close(out, reference.reference_attention(q, k_ref, v_ref), torch.float16)


def test_seed_wrapper_errors(device: str) -> None:
    q, k, v = _qkv(device)
    packed, norms, centroids, rotation, _ = _compressed(k, 4)
    with pytest.raises(ValueError, match="centroids must hold 4, 8 or 16 values"):
        api.triton_flash_attention_tq4(q, packed, norms, centroids[:5], rotation, v)
    with pytest.raises(ValueError, match=r"k_packed has 32 bytes per vector, but 8 centroids mean 3-bit codes"):
        api.triton_flash_attention_tq4(q, packed, norms, centroids[:8], rotation, v)
    with pytest.raises(TypeError, match="k_packed must have dtype uint8"):
        api.triton_flash_attention_tq4(q, packed.float(), norms, centroids, rotation, v)
    with pytest.raises(ValueError, match="v_norms must have shape"):
        api.triton_flash_attention_tq4_kv(q, packed, norms, packed, norms[:, :1], centroids, rotation)


@pytest.mark.parametrize("n_q,family", [(1, Family.ATTN_DECODE), (16, Family.ATTN_DECODE), (17, Family.ATTN_PREFILL)])
def test_dispatch(n_q: int, family: Family, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """N_q <= 16 takes the split-K decode schedule; the variant follows the operands (prefill: the
    fused compressed kernel, which the GPU default replaces by dequantise-then-vanilla, checked in
    tests/ops/test_prefill_dequant.py)."""
    from tqgen.tuning.prefill_route import force_prefill_method

    seen: list[VariantSpec] = []
    real_decode, real_prefill = api.attention_ops.decode, api.attention_ops.prefill
    monkeypatch.setattr(api.attention_ops, "decode", lambda spec, *a: seen.append(spec) or real_decode(spec, *a))
    monkeypatch.setattr(api.attention_ops, "prefill", lambda spec, *a: seen.append(spec) or real_prefill(spec, *a))
    q, k, v = _qkv(device, nq=n_q, hq=6, hkv=2)
    kc = CompressedTensor(*_compressed(k, 4)[:2], 4, 64, *_compressed(k, 4)[2:4])
    with force_prefill_method("fused"):
        api.attention(q, kc, v, is_causal=True)
    assert seen == [VariantSpec(family, 64, 4, None, 3, True, True)]


def test_out_and_defaults(device: str) -> None:
    q, k, v = _qkv(device)
    out = poison_(torch.empty_like(q))
    assert api.attention(q, k, v, out=out) is out
    assert_close(out, reference.reference_attention(q, k, v, 1 / math.sqrt(64)), torch.float16)


def test_empty_sizes(device: str) -> None:
    q, k, v = _qkv(device, nkv=0)
    assert torch.all(api.attention(q, k, v) == 0)
    q, k, v = _qkv(device, nq=0)
    assert api.attention(q, k, v).shape == (2, 4, 0, 64)


def test_importable_names() -> None:
    assert set(api.__all__) >= {"attention", "triton_flash_attention", "triton_flash_attention_tq4",
                                "triton_flash_attention_tq4_kv"}
