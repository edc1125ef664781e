"""CompressedDynamicCache driven directly through ``update``: storage, growth, policy, reordering, sizes."""

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.cache_utils import DynamicSlidingWindowLayer

import tqgen.hf.cache as cache_module
from tqgen.hf import CompressedDynamicCache, CompressedLayer, FullPrecisionLayer
from tqgen.quant import compress, decompress
from tqgen.testing import assert_close

D = 64
# These tests are about the compressed storage: no exact sinks or window (tests/hf/test_exact_tokens.py).
COMPRESS_ALL = dict(sink_tokens=0, residual_length=0)


def _cache(*args, **kwargs) -> CompressedDynamicCache:
    return CompressedDynamicCache(*args, **{**COMPRESS_ALL, **kwargs})


def _kv(batch: int, heads: int, n: int, head_dim: int = D, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, heads, n, head_dim, generator=gen)
    v = torch.randn(batch, heads, n, head_dim, generator=gen)
    return k.to(device), v.to(device)


def _roundtrip(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the cache should return for ``x``: the float64 reference compress -> decompress."""
    packed, norms = compress(x.double().cpu(), bits)
    return decompress(packed, norms, bits, x.shape[-1], dtype=torch.float64)


def _keys_roundtrip(k: torch.Tensor, first: int, bits: int) -> torch.Tensor:
    """What the cache returns for keys: it stores them minus the mean of the first ``first`` tokens
    (per batch row and head) and adds it back when decompressing."""
    mu = k[:, :, :first].double().mean(2, keepdim=True)
    return _roundtrip(k.double() - mu, bits) + mu.cpu()


def _storage_bytes(cache: CompressedDynamicCache) -> int:
    """Bytes of every distinct storage the cache's layers hold."""
    storages = {}
    for layer in cache.layers:
        tensors = list(layer._buffers.values()) if hasattr(layer, "_buffers") else [layer.keys, layer.values]
        for t in tensors:
            if t is not None:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_update_returns_exact_prefill_then_decompressed_history(device):
    """Non-fused mode: prefill attends over exact K/V; later chunks over the decompressed history (K4/V3)."""
    cache = _cache(k_bits=4, v_bits=3)
    k0, v0 = _kv(2, 2, 7, device=device)
    k1, v1 = _kv(2, 2, 3, device=device, seed=1)
    keys, values = cache.update(k0, v0, 0)
    assert keys is k0 and values is v0
    keys, values = cache.update(k1, v1, 0, {"cache_position": torch.arange(7, 10)})  # 5.0-style cache_kwargs
    assert cache.get_seq_length() == 10 and keys.shape == (2, 2, 10, D)
    assert_close(keys, _keys_roundtrip(torch.cat([k0, k1], 2), 7, 4), torch.float32, "keys")
    assert_close(values, _roundtrip(torch.cat([v0, v1], 2), 3), torch.float32, "values")
    assert cache.get_mask_sizes(1, 0) == (11, 0)


def test_fused_mode_keeps_no_full_precision_copy(device):
    cache = _cache()
    cache.fused_mode = True
    k0, v0 = _kv(1, 2, 5, device=device)
    cache.update(k0, v0, 0)
    assert cache.fused_kv(0, k0) is None, "a prefill over exact K/V needs no compressed read"
    k1, v1 = _kv(1, 2, 2, device=device, seed=1)
    keys, values = cache.update(k1, v1, 0)
    assert keys is k1 and values is v1, "fused mode returns the new chunk as is"
    assert cache.fused_kv(0, k1.clone()) is None, "only the tensor update returned selects the compressed path"
    compressed_k, compressed_v = cache.fused_kv(0, k1)
    layer = cache.layers[0]
    assert compressed_k.packed.data_ptr() == layer._buffers["k_packed"].data_ptr(), "views, not copies"
    assert compressed_k.shape == (1, 2, 7, D) and compressed_v.norms.shape == (1, 2, 7)
    assert {t.dtype for t in layer._buffers.values()} == {torch.uint8, torch.float32}
    cache.fused_mode = False
    assert cache.fused_kv(0, k1) is None


def test_capacity_grows_geometrically(device, monkeypatch):
    """Appending one token at a time reallocates O(log n) times, and growth keeps the history intact."""
    monkeypatch.setattr(cache_module, "CAPACITY_GRANULE", 1)
    cache = _cache(growth=2.0)
    k, v = _kv(1, 1, 20, device=device)
    cache.update(k[:, :, :3], v[:, :, :3], 0)
    capacities = []
    for t in range(3, 20):
        cache.update(k[:, :, t : t + 1], v[:, :, t : t + 1], 0)
        capacities.append(cache.layers[0].capacity)
    layer = cache.layers[0]
    assert layer.reallocations == 3 and capacities[-1] == 24, capacities
    keys, _ = layer.decompressed(torch.float32)
    assert_close(keys, _keys_roundtrip(k, 3, 4), torch.float32, "keys after growth")


def test_initial_capacity_allocates_once(device):
    cache = _cache(initial_capacity=100)
    k, v = _kv(1, 1, 1, device=device)
    cache.update(k, v, 0)
    assert cache.layers[0].capacity == 128  # rounded up to CAPACITY_GRANULE


def test_crop_then_append_overwrites_the_tail(device):
    cache = _cache()
    k, v = _kv(1, 2, 9, device=device)
    cache.update(k[:, :, :6], v[:, :, :6], 0)
    cache.update(torch.zeros_like(k[:, :, :3]), v[:, :, 6:], 0)
    cache.crop(-3)
    assert cache.get_seq_length() == 6
    keys, _ = cache.update(k[:, :, 6:], v[:, :, 6:], 0)
    assert_close(keys, _keys_roundtrip(k, 6, 4), torch.float32, "keys")
    cache.crop(4)  # legacy form: keep the first 4 tokens
    assert cache.get_seq_length() == 4
    cache.crop(0)
    assert cache.get_seq_length() == 4


def test_batch_reorderings(device):
    cache = _cache()
    k, v = _kv(3, 2, 4, device=device)
    cache.update(k, v, 0)
    reference = cache.layers[0].decompressed(torch.float32)[0]
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert torch.equal(cache.layers[0].decompressed(torch.float32)[0], reference[[2, 0, 0]])
    cache.batch_select_indices(torch.tensor([0, 1]))
    assert torch.equal(cache.layers[0].decompressed(torch.float32)[0], reference[[2, 0]])
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache.layers[0].decompressed(torch.float32)[0], reference[[2, 2, 0, 0]])
    new_k, new_v = _kv(4, 2, 1, device=device, seed=1)
    keys, _ = cache.update(new_k, new_v, 0)  # appends after a reorder use the reordered rows
    assert keys.shape == (4, 2, 5, D)


def test_reset_frees_and_accepts_a_new_batch(device):
    cache = _cache()
    cache.update(*_kv(2, 2, 3, device=device), 0)
    with pytest.raises(ValueError, match="reset"):
        cache.update(*_kv(1, 2, 1, device=device), 0)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    cache.update(*_kv(1, 2, 2, device=device), 0)
    assert cache.get_seq_length() == 2


def test_reported_size_is_the_allocated_bytes(device):
    """nbytes() = every byte the buffers hold (capacity-based); uncompressed_nbytes() = the same tokens
    uncompressed in the model's dtype; fp16_nbytes() = in 16 bits."""
    cache = _cache(k_bits=4, v_bits=2, skip_layers=[1], initial_capacity=64)
    for layer_idx in range(2):
        cache.update(*_kv(2, 2, 64, device=device), layer_idx)
    assert isinstance(cache.layers[1], FullPrecisionLayer)
    assert cache.nbytes() == _storage_bytes(cache)
    # layer 0 holds 64 tokens: K 4-bit (32 B + 4 B norm), V 2-bit (16 B + 4 B norm) per token per head
    assert cache.layers[0].nbytes() == 2 * 2 * 64 * (32 + 4 + 16 + 4)
    assert cache.fp16_nbytes() == 2 * (2 * 2 * 64 * 2 * D * 2)
    assert cache.uncompressed_nbytes() == 4 * (2 * 2 * 64 * 2 * D * 2)  # fp32 K/V: 4 bytes an element
    compressed_only = _cache(initial_capacity=64)
    compressed_only.update(*_kv(2, 2, 64, device=device), 0)
    # against the fp32 K/V it was given (7.1x at D=64); 3.56x against 16 bits
    assert compressed_only.compression_ratio() == pytest.approx(4 * D / (D // 2 + 4))
    assert compressed_only.fp16_nbytes() / compressed_only.nbytes() == pytest.approx(2 * D / (D // 2 + 4))


def test_layer_policy_from_config():
    """Sliding-window layers stay transformers' window layers; skip_layers (negative = from the end) stay fp16."""
    config = Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=16, max_window_layers=2)
    cache = _cache(config, skip_layers=[-3])
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [CompressedLayer, FullPrecisionLayer, DynamicSlidingWindowLayer, DynamicSlidingWindowLayer]
    assert cache.is_sliding == [False, False, True, True]
    predicate = _cache(LlamaConfig(num_hidden_layers=3), skip_layers=lambda i: i % 2 == 0)
    assert [type(layer) for layer in predicate.layers] == [FullPrecisionLayer, CompressedLayer, FullPrecisionLayer]
    with pytest.raises(ValueError, match="num_layers"):
        _cache(skip_layers=[-1])
    with pytest.raises(ValueError, match="bits"):
        _cache(k_bits=5)


def test_layers_of_different_head_dim_get_their_own_quantizer(device):
    cache = _cache(k_bits=3, v_bits=3)
    cache.update(*_kv(1, 1, 2, head_dim=64, device=device), 0)
    cache.update(*_kv(1, 1, 2, head_dim=128, device=device), 1)
    cache.update(*_kv(1, 1, 2, head_dim=64, device=device), 2)
    first, second, third = cache.layers
    assert (first.key_quant.head_dim, second.key_quant.head_dim) == (64, 128)
    assert first.key_quant is third.key_quant is first.value_quant, "one TurboQuant per (head_dim, bits)"
    assert cache.get_max_cache_shape() == -1 and not cache.is_compileable


def test_steps_in_and_out_of_inference_mode(device):
    """Buffers are normal tensors: a prefill under torch.inference_mode, then generate's no_grad steps."""
    cache = _cache(skip_layers=[1], num_layers=2)
    with torch.inference_mode():
        for layer_idx in range(2):
            cache.update(*_kv(1, 1, 3, device=device), layer_idx)
    with torch.no_grad():
        for layer_idx in range(2):
            cache.update(*_kv(1, 1, 70, device=device, seed=1), layer_idx)  # grows past the first capacity
    assert cache.get_seq_length() == 73 and cache.layers[0].reallocations == 1


def test_uncentred_keys_are_the_plain_roundtrip(device):
    cache = _cache(center_keys=False)
    k, v = _kv(2, 2, 9, device=device)
    cache.update(k[:, :, :5], v[:, :, :5], 0)
    keys, _ = cache.update(k[:, :, 5:], v[:, :, 5:], 0)
    assert cache.layers[0].key_offset is None
    assert_close(keys, _roundtrip(k, 4), torch.float32, "keys")


def test_centred_keys_lose_less_on_keys_with_a_common_direction(device):
    """Keys sharing a large common component (as real models' do): storing k - mean spends the
    codes on what tells keys apart, so the attention output is much closer to the exact one."""
    gen = torch.Generator().manual_seed(3)
    common = 4.0 * torch.randn(1, 2, 1, D, generator=gen)
    k = (common + torch.randn(1, 2, 40, D, generator=gen)).to(device)
    v = torch.randn(1, 2, 40, D, generator=gen).to(device)
    q = torch.randn(1, 2, 1, D, generator=gen).to(device)
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / D**0.5, -1) @ v.double()
    errors = {}
    for centred in (False, True):
        cache = _cache(center_keys=centred)
        cache.update(k[:, :, :39], v[:, :, :39], 0)
        keys, values = cache.update(k[:, :, 39:], v[:, :, 39:], 0)
        out = torch.softmax(q.double() @ keys.double().transpose(-1, -2) / D**0.5, -1) @ values.double()
        errors[centred] = ((out - exact).norm() / exact.norm()).item()
    assert errors[True] < 0.6 * errors[False], errors
    offset = cache.layers[0].key_offset
    assert offset.shape == (1, 2, 1, D) and offset.dtype == torch.float32


def test_key_offset_follows_batch_reorderings(device):
    cache = _cache()
    k, v = _kv(3, 2, 6, device=device)
    cache.update(k, v, 0)
    offset = cache.layers[0].key_offset.clone()
    cache.reorder_cache(torch.tensor([2, 0, 0], device=device))
    assert torch.equal(cache.layers[0].key_offset, offset[[2, 0, 0]])
    cache.batch_select_indices(torch.tensor([1], device=device))
    assert torch.equal(cache.layers[0].key_offset, offset[[0]])
    cache.reset()
    assert cache.layers[0].key_offset is None

