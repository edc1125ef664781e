"""CompressedDynamicCache under bad input and across dtypes: atomic updates, policy checks, sizes per
layer kind in the model's own dtype, and the cache keyword of the installed transformers."""

import pytest
import torch
from transformers import DynamicCache, Gemma3TextConfig, LlamaConfig
from transformers.cache_utils import DynamicSlidingWindowLayer

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import CompressedDynamicCache, CompressedLayer, cache_kwarg, cache_kwargs
from tqgen.quant.packing import packed_width


COMPRESS_ALL = dict(sink_tokens=0, residual_length=0)  # sizes and round trips of compressed tokens only


def _kv(batch, heads, n, head_dim=64, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, heads, n, head_dim, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(batch, heads, n, head_dim, generator=gen).to(device=device, dtype=dtype)
    return k, v


# ----------------------------------------------------------------------- atomic updates
def test_failed_first_update_leaves_the_layer_uninitialised(device):
    """An unsupported head_dim fails the first update with a clear error, and leaves no half-built
    layer behind: the same error again (not an AttributeError), and a good update then works."""
    cache = CompressedDynamicCache()
    for _ in range(2):
        with pytest.raises(ValueError, match=r"layer 0: key_states: head_dim must be even and in \[32, 256\], got 16"):
            cache.update(*_kv(1, 2, 3, head_dim=16, device=device), 0)
        assert not cache.layers[0].is_initialized
    keys, _ = cache.update(*_kv(2, 2, 3, device=device), 0)  # a different batch is fine: nothing was kept
    assert keys.shape == (2, 2, 3, 64) and cache.get_seq_length() == 3


def test_failed_first_write_leaves_the_layer_uninitialised(device):
    """An input check failing in the first write (fp64 K/V) leaves the layer fresh."""
    cache = CompressedDynamicCache()
    with pytest.raises(TypeError, match="must have dtype"):
        cache.update(*_kv(1, 2, 3, dtype=torch.float64, device=device), 0)
    assert not cache.layers[0].is_initialized and cache.nbytes() == 0
    cache.update(*_kv(3, 2, 4, device=device), 0)
    assert cache.layers[0].batch == 3 and cache.get_seq_length() == 4


def test_failed_later_update_changes_nothing(device):
    cache = CompressedDynamicCache(initial_capacity=64, **COMPRESS_ALL)
    cache.update(*_kv(2, 2, 5, device=device), 0)
    before = [t.clone() for t in cache.layers[0].decompressed(torch.float32)]
    with pytest.raises(ValueError, match="batch/heads"):
        cache.update(*_kv(1, 2, 1, device=device), 0)
    with pytest.raises(TypeError, match="x must have dtype"):
        cache.update(*_kv(2, 2, 1, dtype=torch.float64, device=device), 0)
    assert cache.get_seq_length() == 5
    for old, new in zip(before, cache.layers[0].decompressed(torch.float32)):
        assert torch.equal(old, new)


def test_unsupported_head_dim_is_refused_at_construction():
    model = tiny_causal_lm("llama", head_dim=16, heads=4, kv_heads=2, hidden=64)
    with pytest.raises(ValueError, match=r"layer 0: head_dim must be even and in \[32, 256\], got 16"):
        CompressedDynamicCache(model.config)
    with pytest.raises(ValueError, match="got 16"):
        tqgen.hf.enable(model)
    assert model.config._attn_implementation == "sdpa"  # nothing was installed
    # Skipping every layer is a valid way to use the cache on such a model.
    cache = CompressedDynamicCache(model.config, skip_layers=[0, 1])
    ids = torch.randint(3, 100, (1, 4))
    model(ids, **cache_kwargs(model, cache), use_cache=True)
    assert cache.get_seq_length() == 4


def test_first_forward_error_is_repeatable_without_config(device):
    """No config (layers built lazily): every forward names the problem; none finds broken state."""
    model = tiny_causal_lm("llama", head_dim=16, heads=4, kv_heads=2, hidden=64).to(device)
    cache = CompressedDynamicCache()
    ids = torch.randint(3, 100, (1, 4), device=device)
    for _ in range(2):
        with pytest.raises(ValueError, match="got 16"):
            model(ids, **cache_kwargs(model, cache), use_cache=True)


# ------------------------------------------------------------------------ policy checks
@pytest.mark.parametrize("skip", [[5], [2], [-3]])
def test_out_of_range_skip_layers_are_rejected(skip):
    with pytest.raises(ValueError, match=rf"skip_layers index {skip[0]} is out of range for a model of 2 layers"):
        CompressedDynamicCache(LlamaConfig(num_hidden_layers=2), skip_layers=skip)
    with pytest.raises(ValueError, match="out of range"):
        CompressedDynamicCache(num_layers=2, skip_layers=skip)


@pytest.mark.parametrize("skip", [[1.0], [True], "0"])
def test_skip_layers_of_the_wrong_type_are_rejected(skip):
    with pytest.raises(TypeError, match="skip_layers"):
        CompressedDynamicCache(LlamaConfig(num_hidden_layers=2), skip_layers=skip)


@pytest.mark.parametrize("method", ["reorder_cache", "batch_select_indices"])
@pytest.mark.parametrize("indices", [[0, 5], [-1, 0], [2]])
def test_batch_indices_out_of_range_are_rejected(method, indices, device):
    cache = CompressedDynamicCache(Gemma3TextConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], sliding_window=8))
    for layer in range(2):
        cache.update(*_kv(2, 2, 3, device=device), layer)
    name = "beam_idx" if method == "reorder_cache" else "indices"
    with pytest.raises(ValueError, match=rf"{name} must hold row indices in \[0, 2\) \(the cache holds a batch of 2\)"):
        getattr(cache, method)(torch.tensor(indices, device=device))
    with pytest.raises(TypeError, match=f"{name} must be an integer tensor"):
        getattr(cache, method)(torch.tensor([0.0, 1.0], device=device))
    assert cache.layers[1].batch == 2  # nothing was reordered


# ------------------------------------------------------------------- sizes per layer kind
def _sized_cache(dtype, sliding: bool, device: str, n: int = 64):
    if sliding:
        config = Gemma3TextConfig(
            num_hidden_layers=3, head_dim=64, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            sliding_window=16,
        )
    else:
        config = LlamaConfig(num_hidden_layers=2, head_dim=64, hidden_size=128, num_attention_heads=2)
    cache = CompressedDynamicCache(config, initial_capacity=n, **COMPRESS_ALL)
    for layer in range(len(cache.layers)):
        cache.update(*_kv(2, 2, n, dtype=dtype, device=device, seed=layer), layer)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sliding", [False, True], ids=["full", "with_sliding"])
def test_sizes_compare_against_the_models_dtype(dtype, sliding, device):
    n, D = 64, 64
    cache = _sized_cache(dtype, sliding, device, n)
    item = dtype.itemsize
    report = cache.size_report()
    compressed_layers = sum(isinstance(layer, CompressedLayer) for layer in cache.layers)
    per_token = 2 * (packed_width(D, 4) + 4)  # K and V codes + fp32 norms, per token per head
    compressed = report["compressed"]
    assert compressed.layers == compressed_layers
    assert compressed.nbytes == compressed_layers * 2 * 2 * n * per_token
    assert compressed.uncompressed_nbytes == compressed_layers * 2 * 2 * n * 2 * D * item
    assert compressed.ratio == pytest.approx(2 * D * item / per_token)  # 3.56x (16-bit), 7.1x (fp32) at D=64
    if sliding:
        window = report["sliding"]
        held = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers
                   if isinstance(layer, DynamicSlidingWindowLayer))
        assert window.layers == 2 and window.nbytes == held and window.ratio == 1.0
        assert set(report) == {"compressed", "sliding"}
    else:
        assert set(report) == {"compressed"}
    assert cache.nbytes() == sum(kind.nbytes for kind in report.values())
    assert cache.uncompressed_nbytes() == sum(kind.uncompressed_nbytes for kind in report.values())
    assert cache.compression_ratio() == pytest.approx(cache.uncompressed_nbytes() / cache.nbytes())
    assert cache.compression_ratio() > 1.0  # an fp32 model with sliding layers reported < 1 before
    elements = cache.uncompressed_nbytes() // item
    assert cache.fp16_nbytes() == 2 * elements  # fp16_nbytes means 16 bits, whatever the model's dtype


def test_skipped_layers_are_their_own_kind(device):
    cache = CompressedDynamicCache(LlamaConfig(num_hidden_layers=2, head_dim=64), skip_layers=[1], initial_capacity=64,
                                   **COMPRESS_ALL)
    for layer in range(2):
        cache.update(*_kv(1, 2, 64, dtype=torch.float16, device=device), layer)
    report = cache.size_report()
    assert set(report) == {"compressed", "uncompressed"}
    assert report["uncompressed"].ratio == 1.0 and report["uncompressed"].nbytes == 2 * 64 * 2 * 64 * 2


# -------------------------------------------------------------- the cache keyword
def test_cache_keyword_is_read_from_the_signatures():
    model = tiny_causal_lm("llama")
    import inspect

    forward_params = inspect.signature(model.forward).parameters
    assert cache_kwarg(model) in forward_params
    assert cache_kwarg(model) == ("cache" if "cache" in forward_params else "past_key_values")
    assert cache_kwarg(model, "generate") in inspect.signature(model.prepare_inputs_for_generation).parameters
    with pytest.raises(ValueError, match="method must be"):
        cache_kwarg(model, "backward")
    with pytest.raises(TypeError, match="model must be a transformers model"):
        cache_kwarg(object())


def test_deprecated_cache_keyword_fails_the_suite():
    """pyproject's filterwarnings turns transformers' cache-argument deprecation into an error."""
    model = tiny_causal_lm("llama")
    if cache_kwarg(model) == "past_key_values":
        pytest.skip("this transformers takes past_key_values= (no cache= rename yet)")
    ids = torch.randint(3, 100, (1, 3))
    with pytest.raises(FutureWarning, match="past_key_values"):
        model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    out = model(ids, **cache_kwargs(model, DynamicCache(config=model.config)), use_cache=True)  # no warning
    assert out.logits.shape == (1, 3, 128)
