"""The transformers attention functions, called directly with HF-layout tensors."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tqgen.hf import (
    TRITON_FA,
    TRITON_FA_TQ4_KV,
    CompressedDynamicCache,
    register_triton_fa,
    triton_fa_forward,
    triton_fa_tq4_kv_forward,
)
from tqgen.quant import decompress, reference_attention
from tqgen.testing import assert_close

D = 64


def _attention_module(layer_idx: int = 0, cache: CompressedDynamicCache | None = None) -> torch.nn.Module:
    module = torch.nn.Module()
    module.layer_idx, module.is_causal, module.num_key_value_groups = layer_idx, True, 2
    if cache is not None:
        module._tq4_cache = cache
    return module


def _qkv(batch: int, n_q: int, n_kv: int, q_heads: int = 4, kv_heads: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, n_q, D, generator=gen)
    k = torch.randn(batch, kv_heads, n_kv, D, generator=gen)
    v = torch.randn(batch, kv_heads, n_kv, D, generator=gen)
    return q, k, v


def _hf_layout(reference: torch.Tensor) -> torch.Tensor:
    return reference.transpose(1, 2)


def test_registered_with_both_interfaces():
    register_triton_fa()
    for name, forward in ((TRITON_FA, triton_fa_forward), (TRITON_FA_TQ4_KV, triton_fa_tq4_kv_forward)):
        assert AttentionInterface()[name] is forward
        assert AttentionMaskInterface()[name] is sdpa_mask, "without a mask function, padding masks are dropped"


def test_vanilla_padding_mask_and_gqa(device):
    """A left-padded prefill with sdpa_mask's bool mask; GQA heads are not repeated by the caller."""
    q, k, v = (t.to(device) for t in _qkv(2, 9, 9))
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, :4] = False
    mask = sdpa_mask(batch_size=2, q_length=9, kv_length=9, attention_mask=padding, device="cpu").to(device)
    out, weights = triton_fa_forward(_attention_module(), q, k, v, mask, scaling=0.1)
    assert weights is None and out.shape == (2, 9, 4, D) and out.is_contiguous()
    expected = reference_attention(q, k, v, scale=0.1, mask=mask)
    assert_close(out, _hf_layout(expected), torch.float32)


@pytest.mark.parametrize("n_q", [1, 5])
def test_vanilla_causal_is_bottom_right(device, n_q):
    """No mask + Sq > 1 onto a longer K/V (chunked prefill): query i sees keys j <= i + Skv - Sq."""
    q, k, v = (t.to(device) for t in _qkv(1, n_q, 13, seed=n_q))
    out, _ = triton_fa_forward(_attention_module(), q, k, v, None)
    assert_close(out, _hf_layout(reference_attention(q, k, v, causal=n_q > 1)), torch.float32)
    bidirectional, _ = triton_fa_forward(_attention_module(), q, k, v, None, is_causal=False)
    assert_close(bidirectional, _hf_layout(reference_attention(q, k, v)), torch.float32)


def test_unsupported_features_fail_loudly(device):
    q, k, v = (t.to(device) for t in _qkv(1, 2, 2))
    with pytest.raises(ValueError, match="dropout"):
        triton_fa_forward(_attention_module(), q, k, v, None, dropout=0.1)
    with pytest.raises(NotImplementedError, match="soft-capping"):
        triton_fa_tq4_kv_forward(_attention_module(), q, k, v, None, softcap=50.0)


def test_fused_reads_the_compressed_cache(device):
    """Prefill (exact K/V), then a 3-token decode step: the kernel reads all 10 tokens compressed,
    bottom-right causal, and matches attention over the decompressed cache."""
    cache = CompressedDynamicCache(k_bits=4, v_bits=3, sink_tokens=0, residual_length=0)  # every token compressed
    cache.fused_mode = True
    module = _attention_module(cache=cache)
    q, k, v = (t.to(device) for t in _qkv(1, 7, 7))
    keys, values = cache.update(k, v, 0)
    prefill, _ = triton_fa_tq4_kv_forward(module, q, keys, values, None)
    assert_close(prefill, _hf_layout(reference_attention(q, k, v, causal=True)), torch.float32, "prefill")

    q, k, v = (t.to(device) for t in _qkv(1, 3, 3, seed=1))
    keys, values = cache.update(k, v, 0)
    assert keys.shape[2] == 3, "fused mode hands attention only the new chunk"
    out, _ = triton_fa_tq4_kv_forward(module, q, keys, values, None)
    layer = cache.layers[0]
    compressed_k, compressed_v = layer.compressed()
    full_k = decompress(compressed_k.packed, compressed_k.norms, 4, D)
    full_v = decompress(compressed_v.packed, compressed_v.norms, 3, D)
    expected = reference_attention(q, full_k, full_v, causal=True)
    assert_close(out, _hf_layout(expected), torch.float32, "decode over the compressed cache")


def test_fused_falls_back_to_the_given_kv(device):
    """K/V that this cache did not just return (no cache, another cache, uncompressed layer) are used as given."""
    q, k, v = (t.to(device) for t in _qkv(1, 1, 6))
    expected = _hf_layout(reference_attention(q, k, v))
    cache = CompressedDynamicCache(sink_tokens=0, residual_length=0)
    cache.fused_mode = True
    for module in (_attention_module(), _attention_module(cache=cache), _attention_module(layer_idx=3, cache=cache)):
        out, _ = triton_fa_tq4_kv_forward(module, q, k, v, None)
        assert_close(out, expected, torch.float32)
