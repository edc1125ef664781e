"""CompressedStaticCache on tiny random models (CPU interpreter): torch.compile without graph breaks,
generate (greedy, sampling, left padding), sizes and misuse errors."""

import inspect

import pytest
import torch
from transformers import CompileConfig

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import CompressedStaticCache, CompressedStaticLayer, cache_argument

PROMPT, STEPS, CAPACITY = 6, 3, 16

MODELS = {
    "llama": {},
    # Layer 0 slides over a window the decode steps overflow; layer 1 is compressed.
    "gemma3": {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8},
}


def _model(family: str, device: str):
    return tiny_causal_lm(family, head_dim=64, heads=4, kv_heads=2, layers=2, initializer_range=0.02,
                          **MODELS[family]).to(device)


def _batch(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second left-padded by two tokens."""
    ids = torch.randint(3, 128, (2, PROMPT), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    return ids, mask


@torch.no_grad()
def _decode(model, forward, cache, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager prefill, then STEPS greedy steps through ``forward``: (tokens, last logits) per step."""
    name = cache_argument(model)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{name: cache})
    tokens, logits = [out.logits[:, -1].argmax(-1)], [out.logits[:, -1]]
    for _ in range(STEPS):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = forward(input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True, **{name: cache})
        tokens.append(out.logits[:, -1].argmax(-1))
        logits.append(out.logits[:, -1])
    return torch.stack(tokens), torch.stack(logits)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_compiled_fullgraph_matches_eager(family, device):
    """torch.compile(fullgraph=True) (aot_eager: the real kernels run) traces the static cache and
    backend with no graph break and decodes the same tokens and logits as eager; the compressed
    cache also equals the dynamic cache read over its compressed prompt."""
    model = _model(family, device)
    ids, mask = _batch(device)
    eager_cache = tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY)
    assert any(isinstance(layer, CompressedStaticLayer) for layer in eager_cache.layers)
    eager_tokens, eager_logits = _decode(model, model, eager_cache, ids, mask)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    cache = tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY)
    tokens, logits = _decode(model, compiled, cache, ids, mask)
    assert torch.equal(tokens, eager_tokens)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-5, atol=1e-5)

    dynamic = tqgen.hf.enable(model, 4, 4, exact_prefill=False, residual_length=0)
    _, dynamic_logits = _decode(model, model, dynamic, ids, mask)
    torch.testing.assert_close(dynamic_logits, eager_logits, rtol=1e-4, atol=1e-4)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    torch._dynamo.reset()


def _generate(model, cache, ids, mask, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, **{cache_argument(model): cache}, **kwargs)


@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_generate_matches_dynamic_cache(sampling, device):
    """generate() with the static cache (left-padded batch) = the dynamic cache over its compressed prompt."""
    model = _model("llama", device)
    ids, mask = _batch(device)
    kwargs = dict(do_sample=True, top_k=20, temperature=0.9) if sampling else dict(do_sample=False)
    torch.manual_seed(0)
    static = _generate(model, tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY), ids, mask, **kwargs)
    torch.manual_seed(0)
    dynamic = _generate(model, tqgen.hf.enable(model, 4, 4, exact_prefill=False, residual_length=0), ids, mask, **kwargs)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    assert static.shape == (2, PROMPT + STEPS)
    assert torch.equal(static, dynamic)


def test_generate_compiled_by_transformers(device):
    """generate() compiles the decode steps itself (compile_config) with the static cache: same tokens as eager."""
    model = _model("llama", device)
    ids, mask = _batch(device)
    eager = _generate(model, tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY), ids, mask, do_sample=False)
    config = CompileConfig(backend="aot_eager", fullgraph=True)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told otherwise
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = _generate(model, tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY), ids, mask,
                         do_sample=False, compile_config=config)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert graphs >= 1, "generate did not compile the decode steps"
    assert torch.equal(compiled, eager)


def test_sizes_and_reset(device):
    """nbytes() counts every allocated buffer; kv_nbytes() is codes + norms (4-bit, D=64: 36 bytes a
    vector) and the exact sinks (fp32 here), each buffer with one scratch slot."""
    model = _model("llama", device)
    ids, mask = _batch(device)
    cache = tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=CAPACITY)
    assert cache.nbytes() == 0 and cache.is_compileable
    _decode(model, model, cache, ids, mask)
    sinks = cache.sink_tokens
    assert sinks == 4
    # K and V x batch 2 x 2 heads x (compressed slots x (codes + fp32 norm) + sink slots x D x 4 bytes)
    per_layer = 2 * 2 * 2 * ((CAPACITY - sinks + 1) * (32 + 4) + (sinks + 1) * 64 * 4)
    assert cache.kv_nbytes() == 2 * per_layer
    tensors = [t for layer in cache.layers for t in layer._tensors()] + cache._workspaces
    assert cache.nbytes() == sum(t.numel() * t.element_size() for t in tensors)
    assert cache.fp16_nbytes() == 2 * 2 * 2 * 2 * CAPACITY * 64 * 2
    assert int(cache.get_seq_length()) == PROMPT + STEPS
    pointer = cache.layers[0].k_packed.data_ptr()
    cache.reset()
    assert int(cache.get_seq_length()) == 0 and cache.layers[0].k_norms.abs().sum() == 0
    assert cache.layers[0].k_packed.data_ptr() == pointer  # in place: captured graphs stay valid
    tqgen.hf.uninstall_fused_tq4_kv(model)


def test_misuse_is_refused(device):
    model = _model("llama", device)
    with pytest.raises(ValueError, match="max_cache_len"):
        tqgen.hf.enable(model, 4, 4, static=True)
    with pytest.raises(ValueError, match="max_cache_len must be an int"):
        CompressedStaticCache(model.config, max_cache_len=0)
    with pytest.raises(ValueError, match="k_bits"):
        CompressedStaticCache(model.config, max_cache_len=8, k_bits=5)
    cache = CompressedStaticCache(model.config, max_cache_len=CAPACITY)  # not installed: SDPA would see 1 token
    ids, mask = _batch(device)
    with pytest.raises(RuntimeError, match="static backend"):
        model(input_ids=ids, attention_mask=mask, **{cache_argument(model): cache})


def test_cache_argument_follows_the_installed_transformers():
    model = _model("llama", "cpu")
    name = cache_argument(model)
    params = inspect.signature(type(model).forward).parameters
    assert name in params
    assert name == ("cache" if "cache" in params else "past_key_values")


def test_decode_steps_derive_nothing_new(device):
    """Everything the ops derive from the codebooks and the rotation exists once the prompt is in
    (head_dim 128: on an H100/H200 the decode steps take the Hopper kernel and its tables): a value
    first derived inside a compiled CUDA-graph region would live in the graph's private pool, which
    cudagraph trees refuse."""
    from tqgen.ops import _DERIVED

    model = tiny_causal_lm("llama", head_dim=128, heads=8, kv_heads=2, hidden=256, layers=1,
                           initializer_range=0.02, dtype=torch.float16 if device == "cuda" else torch.float32).to(device)
    ids, mask = _batch(device)
    cache = tqgen.hf.enable(model, static=True, max_cache_len=CAPACITY)
    name = cache_argument(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{name: cache})
        before = set(_DERIVED)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        model(input_ids=out.logits[:, -1:].argmax(-1), attention_mask=mask, use_cache=True, **{name: cache})
    tqgen.hf.uninstall_fused_tq4_kv(model)
    assert set(_DERIVED) == before
