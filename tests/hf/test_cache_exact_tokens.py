"""Exact sink tokens and the exact recent window of the compressed caches: storage, rolling, the
fused backend against "decompress the middle + attention", crop/reorder/reset and sizes."""

from __future__ import annotations

import secrets

import pytest
import torch

import tqgen.hf
from tqgen.hf import CompressedDynamicCache, CompressedStaticCache, cache_argument, triton_fa_tq4_kv_forward
from testing_models import tiny_causal_lm
from tqgen.quant import compress, decompress, reference_attention
from tqgen.testing import LOGITS_TOLERANCE, assert_close
from tqgen.turboquant import TurboQuant

D = 64


def _kv(batch: int, heads: int, n: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    common = 2.0 * torch.randn(1, heads, 1, D, generator=gen)  # keys share a direction, as in real models
    k = common + torch.randn(batch, heads, n, D, generator=gen)
    v = torch.randn(batch, heads, n, D, generator=gen)
    return k.to(device), v.to(device)


def _expected(k: torch.Tensor, v: torch.Tensor, n_sinks: int, n_mid: int, first: int, bits=(4, 4)):
    """What the layer holds for the whole K/V given so far: exact sinks, the middle's float64
    round trip (keys centred by the mean of the first chunk past the sinks), the exact window."""
    mid = slice(n_sinks, n_sinks + n_mid)
    mu = k[:, :, n_sinks if first > n_sinks else 0:first].double().mean(2, keepdim=True)
    pk, nk = compress(k[:, :, mid].double().cpu() - mu.cpu(), bits[0])
    pv, nv = compress(v[:, :, mid].double().cpu(), bits[1])
    keys = torch.cat([k[:, :, :n_sinks].double().cpu(), decompress(pk, nk, bits[0], D, dtype=torch.float64) + mu.cpu(),
                      k[:, :, n_sinks + n_mid:].double().cpu()], 2)
    values = torch.cat([v[:, :, :n_sinks].double().cpu(), decompress(pv, nv, bits[1], D, dtype=torch.float64),
                        v[:, :, n_sinks + n_mid:].double().cpu()], 2)
    return keys, values


def _counting_compress(monkeypatch) -> list[int]:
    """Record the token count of every TurboQuant.compress launch."""
    calls, original = [], TurboQuant.compress

    def counted(self, x, out=None, start=0):
        calls.append(x.shape[2])
        return original(self, x, out=out, start=start)

    monkeypatch.setattr(TurboQuant, "compress", counted)
    return calls


def test_sinks_and_window_roll_into_the_codes_in_blocks(device, monkeypatch):
    """Chunks of 7, 1 x 6, 5, 1 with 3 sinks and a window of 4..6 (R=4, block 3): the counters, one
    compress launch each for K and V per roll (a whole number of blocks), exact tokens kept bit for
    bit, and the compressed middle equal to the float64 round trip."""
    cache = CompressedDynamicCache(sink_tokens=3, residual_length=4, residual_block=3)
    calls = _counting_compress(monkeypatch)
    k, v = _kv(2, 2, 19, seed=secrets.randbits(31), device=device)
    layer = None
    # (chunk, compressed after it, window after it): the window is brought below R + block = 7.
    steps = [(7, 0, 4), (1, 0, 5), (1, 0, 6), (1, 3, 4), (1, 3, 5), (1, 3, 6), (1, 6, 4), (5, 9, 6), (1, 12, 4)]
    start = 0
    for chunk, n_mid, n_recent in steps:
        calls.clear()
        cache.update(k[:, :, start:start + chunk], v[:, :, start:start + chunk], 0)
        start += chunk
        layer = cache.layers[0]
        assert (layer.n_sinks, layer.n_mid, layer.n_recent, layer.length) == (3, n_mid, n_recent, start)
        rolled = bool(calls)
        assert calls == ([calls[0]] * 2 if rolled else []), calls
        if rolled:
            assert calls[0] % 3 == 0, "whole blocks only"
    exact = layer.exact_tokens()
    assert exact.n_head == 3 and exact.count == 3 + 4
    assert torch.equal(exact.keys[:, :, :3], k[:, :, :3]) and torch.equal(exact.values[:, :, 3:], v[:, :, -4:])
    keys, values = layer.decompressed(torch.float32)
    want_k, want_v = _expected(k, v, 3, 12, 7)
    assert_close(keys, want_k, torch.float32, "keys")
    assert_close(values, want_v, torch.float32, "values")


def test_window_off_compresses_every_token_past_the_sinks(device, monkeypatch):
    cache = CompressedDynamicCache(sink_tokens=2, residual_length=0)
    calls = _counting_compress(monkeypatch)
    k, v = _kv(1, 2, 6, seed=secrets.randbits(31), device=device)
    cache.update(k[:, :, :1], v[:, :, :1], 0)  # a one-token prompt: only a sink
    assert calls == [] and cache.layers[0].key_offset is not None
    cache.update(k[:, :, 1:], v[:, :, 1:], 0)  # the second sink, then 4 tokens in one launch each
    layer = cache.layers[0]
    assert calls == [4, 4] and (layer.n_sinks, layer.n_mid, layer.n_recent) == (2, 4, 0)
    # the offset came from the first chunk (its only token: it had none past the sinks)
    keys, _ = layer.decompressed(torch.float32)
    assert_close(keys, _expected(k, v, 2, 4, 1)[0], torch.float32, "keys")


def _module(cache: CompressedDynamicCache) -> torch.nn.Module:
    module = torch.nn.Module()
    module.layer_idx, module.is_causal, module._tq4_cache = 0, True, cache
    return module


@pytest.mark.parametrize("options", [dict(sink_tokens=4, residual_length=0), dict(sink_tokens=0, residual_length=5),
                                     dict(sink_tokens=1, residual_length=8, residual_block=5)],
                         ids=["sinks", "window", "both"])
def test_fused_backend_equals_fake_quant_attention(options, device):
    """The fused backend over [sinks, compressed middle, window] equals attention over the layer's
    decompressed K/V (the fake-quant path): a prefill, decode steps (N_q 1 and 3, with a padding
    mask), and a chunked prefill of 21 tokens (the decompress + prefill route), GQA, batch 2."""
    cache = CompressedDynamicCache(k_bits=4, v_bits=3, **options)
    cache.fused_mode = True
    module = _module(cache)
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    k, v = _kv(2, 2, 100, seed=seed, device=device)
    start = 0
    for n_q, padded in ((57, False), (1, False), (3, True), (1, True), (21, False), (1, False)):
        q = torch.randn(2, 4, n_q, D, generator=gen).to(device)
        keys, values = cache.update(k[:, :, start:start + n_q], v[:, :, start:start + n_q], 0)
        start += n_q
        mask = None
        if padded:  # row 1 left-padded by 5 (its first positions hidden), row 0 hides one middle token
            mask = torch.ones(2, 1, n_q, start, dtype=torch.bool, device=device)
            mask[1, ..., :5] = False
            mask[0, ..., 30] = False
            mask &= torch.ones(n_q, start, dtype=torch.bool, device=device).tril(start - n_q)
        out, _ = triton_fa_tq4_kv_forward(module, q, keys, values, mask)
        full_k, full_v = cache.layers[0].decompressed(torch.float32)
        expected = reference_attention(q, full_k, full_v, causal=mask is None and n_q > 1, mask=mask)
        if start == 57:  # the prompt attends over its exact K/V
            expected = reference_attention(q, k[:, :, :57], v[:, :, :57], causal=True)
        assert_close(out, expected.transpose(1, 2), torch.float32, f"step N_q={n_q} seed={seed}")


def test_crop_reorder_and_reset_keep_the_exact_tokens(device):
    cache = CompressedDynamicCache(sink_tokens=2, residual_length=3, residual_block=2)
    k, v = _kv(3, 2, 14, seed=secrets.randbits(31), device=device)
    cache.update(k[:, :, :10], v[:, :, :10], 0)
    layer = cache.layers[0]
    assert (layer.n_sinks, layer.n_mid, layer.n_recent) == (2, 4, 4)
    cache.crop(-2)  # inside the window
    assert (layer.n_sinks, layer.n_mid, layer.n_recent, layer.length) == (2, 4, 2, 8)
    cache.crop(-4)  # past the window, into the compressed tokens
    assert (layer.n_sinks, layer.n_mid, layer.n_recent) == (2, 2, 0)
    cache.update(k[:, :, 4:9], v[:, :, 4:9], 0)  # the window refills: 5 -> compress 2, keep 3
    assert (layer.n_sinks, layer.n_mid, layer.n_recent, layer.length) == (2, 4, 3, 9)
    want_k, want_v = _expected(k[:, :, :9], v[:, :, :9], 2, 4, 10)
    keys, values = layer.decompressed(torch.float32)
    assert_close(keys, _expected(k, v, 2, 4, 10)[0][:, :, :9], torch.float32, "keys after crop and refill")
    assert_close(values, want_v, torch.float32, "values after crop and refill")

    before = [t.clone() for t in layer.decompressed(torch.float32)]
    cache.reorder_cache(torch.tensor([2, 0, 0], device=device))
    assert torch.equal(layer.decompressed(torch.float32)[0], before[0][[2, 0, 0]])
    assert torch.equal(layer.exact_tokens().values, before[1][[2, 0, 0]][:, :, [0, 1, 6, 7, 8]].to(v.dtype))
    cache.batch_select_indices(torch.tensor([0, 2], device=device))
    cache.batch_repeat_interleave(2)
    assert torch.equal(layer.decompressed(torch.float32)[1], before[1][[2, 2, 0, 0]])
    cache.crop(1)  # keep one sink only
    assert (layer.n_sinks, layer.n_mid, layer.n_recent) == (1, 0, 0)
    cache.reset()
    assert cache.nbytes() == 0 and layer.exact_tokens() is not None and layer.exact_tokens().count == 0
    cache.update(*_kv(1, 2, 3, seed=1, device=device), 0)
    assert (layer.n_sinks, layer.n_mid, layer.n_recent, layer.batch) == (2, 0, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_sizes_count_the_exact_tokens(dtype, device):
    """nbytes() = codes and norms (capacity) + the exact buffer: sinks + the largest window, in the
    model's dtype; the report's ratio compares with the model's dtype."""
    cache = CompressedDynamicCache(sink_tokens=4, residual_length=16, residual_block=8, initial_capacity=64)
    k, v = _kv(2, 2, 64, seed=0, device=device)
    cache.update(k.to(dtype), v.to(dtype), 0)
    layer = cache.layers[0]
    exact_slots = 4 + 16 + 8 - 1
    codes = 2 * 2 * 64 * 2 * (D // 2 + 4)
    exact = 2 * 2 * exact_slots * 2 * D * dtype.itemsize
    assert layer.nbytes() == cache.nbytes() == codes + exact
    report = cache.size_report()["compressed"]
    assert report.nbytes == codes + exact and report.uncompressed_nbytes == 2 * 2 * 64 * 2 * D * dtype.itemsize
    assert cache.compression_ratio() == pytest.approx(report.uncompressed_nbytes / (codes + exact))
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*layer._buffers.values(), *layer._exact.values())}
    assert sum(storages.values()) == cache.nbytes()


def test_bad_options_are_refused():
    for name, value in (("sink_tokens", -1), ("residual_length", 1.5), ("residual_block", 0), ("sink_tokens", True)):
        with pytest.raises(ValueError, match=name):
            CompressedDynamicCache(**{name: value})
    config = tiny_causal_lm("llama", head_dim=64, layers=1).config
    with pytest.raises(NotImplementedError, match="residual_length"):
        CompressedStaticCache(config, 16, residual_length=8)
    with pytest.raises(ValueError, match="below max_cache_len"):
        CompressedStaticCache(config, 4, sink_tokens=4)


@torch.no_grad()
def test_static_sinks_equal_the_dynamic_cache_long_prompt(device):
    """A 20-token prompt (the static cache's decompress + prefill route) and decode steps: the static
    cache with 4 sinks = the dynamic cache with 4 sinks, no window, reading its compressed prompt."""
    model = tiny_causal_lm("llama", head_dim=64, heads=4, kv_heads=2, layers=2, initializer_range=0.02).to(device)
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(secrets.randbits(31))).to(device)
    logits = {}
    for name, options in (("static", dict(static=True, max_cache_len=32)),
                          ("dynamic", dict(exact_prefill=False, residual_length=0))):
        cache = tqgen.hf.enable(model, **options)
        key, mask, steps = cache_argument(model), torch.ones_like(ids), []
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{key: cache})
        steps.append(out.logits[:, -1])
        for _ in range(3):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(input_ids=out.logits[:, -1:].argmax(-1), attention_mask=mask, use_cache=True, **{key: cache})
            steps.append(out.logits[:, -1])
        logits[name] = steps
    for step, (a, b) in enumerate(zip(logits["static"], logits["dynamic"])):
        assert_close(a, b, name=f"step {step}", tolerance=LOGITS_TOLERANCE)
    tqgen.hf.uninstall_fused_tq4_kv(model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@torch.no_grad()
def test_gpu_window_rolls_during_decode(dtype):
    """fp16/bf16 on the GPU (head_dim 128: the Hopper kernel on an H100/H200), 4 sinks and a window
    of 16..23 rolling every 8 decode steps: fused = "decompress + attention" within the dtype's rounding."""
    from tqgen.testing import TOLERANCES

    model = tiny_causal_lm("llama", head_dim=128, heads=8, kv_heads=2, hidden=256, initializer_range=0.02,
                           dtype=dtype).cuda()
    tokens = torch.randint(3, 128, (2, 330), generator=torch.Generator().manual_seed(0)).cuda()
    options = dict(sink_tokens=4, residual_length=16, residual_block=8)
    runs = []
    for cache in (CompressedDynamicCache(model.config, **options), None):
        if cache is None:
            cache = tqgen.hf.enable(model, **options)
        kwargs = {cache_argument(model): cache}
        logits = [model(tokens[:, :300], **kwargs).logits[:, -1].float()]
        for t in range(300, tokens.shape[1]):
            logits.append(model(tokens[:, t:t + 1], **kwargs).logits[:, -1].float())
        runs.append(logits)
        assert cache.layers[0].n_sinks == 4 and 16 <= cache.layers[0].n_recent < 24
    tqgen.hf.uninstall_fused_tq4_kv(model)
    for step, (fused, decompressed) in enumerate(zip(runs[1], runs[0])):
        assert_close(fused, decompressed, dtype, f"step {step}", tolerance=TOLERANCES[dtype])
