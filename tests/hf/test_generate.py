"""End to end on tiny random-weight models (CPU interpreter): generate, fused cache, padding, beams, hooks."""

import pytest
import torch
from transformers import DynamicCache

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import CompressedDynamicCache, CompressedLayer, FullPrecisionLayer, cache_kwargs
from tqgen.testing import LOGITS_TOLERANCE, assert_close

PROMPT, NEW = 10, 4
# Exact sinks and a recent window small enough for these short sequences: the window rolls into
# the codes during the tests (the defaults, 4 and 128, would keep every token exact here).
EXACT = dict(sink_tokens=2, residual_length=3, residual_block=2)

# (family, head_dim, query heads, KV heads, layers): GQA and MHA, head_dim 64..256
MODELS = [
    ("llama", 128, 4, 2, 2),
    ("mistral", 64, 4, 4, 2),
    ("qwen2", 128, 4, 1, 2),
    ("qwen3", 64, 4, 2, 2),
    ("gemma", 256, 2, 1, 1),
]


def _tokens(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def _greedy(model, ids, cache=None, **kwargs):
    return model.generate(
        ids, max_new_tokens=NEW, do_sample=False, **cache_kwargs(model, cache, "generate"),
        output_logits=True, return_dict_in_generate=True, **kwargs,
    )


@torch.no_grad()
def _step_logits(model, cache, tokens: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    """Feed ``tokens`` in chunks of the given sizes through ``model`` with ``cache``: last logits of each."""
    logits, start = [], 0
    for size in chunks:
        out = model(tokens[:, start : start + size], **cache_kwargs(model, cache), use_cache=True)
        logits.append(out.logits[:, -1].float())
        start += size
    return logits


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("family,head_dim,heads,kv_heads,layers", MODELS, ids=[m[0] for m in MODELS])
def test_model_family(family, head_dim, heads, kv_heads, layers, device):
    """Vanilla backend = SDPA tokens; fused 4-bit cache: cosine >= 0.99 per step vs fp32 SDPA and
    = "decompress + SDPA" within fp16 rounding; uninstall restores SDPA's outputs exactly."""
    model = tiny_causal_lm(family, head_dim=head_dim, heads=heads, kv_heads=kv_heads, layers=layers, initializer_range=0.02).to(device)
    ids = _tokens(1, PROMPT).to(device)
    sdpa = _greedy(model, ids)
    # Teacher-forced: the prompt, then SDPA's greedy tokens one step at a time.
    tokens, chunks = sdpa.sequences[:, :-1], [PROMPT] + [1] * (NEW - 1)
    reference = _step_logits(model, DynamicCache(), tokens, chunks)
    decompressed = _step_logits(model, CompressedDynamicCache(model.config, **EXACT), tokens, chunks)

    tqgen.hf.install_triton_fa(model)
    vanilla = _greedy(model, ids)
    assert torch.equal(vanilla.sequences, sdpa.sequences)
    for ours, theirs in zip(vanilla.logits, sdpa.logits):
        assert_close(ours, theirs, torch.float32, "vanilla logits")

    cache = tqgen.hf.enable(model, k_bits=4, v_bits=4, **EXACT)
    fused = _step_logits(model, cache, tokens, chunks)
    assert all(isinstance(layer, CompressedLayer) for layer in cache.layers)
    cosines = [_cosine(f, r) for f, r in zip(fused, reference)]
    assert min(cosines) >= 0.99, cosines
    for step, (f, d) in enumerate(zip(fused, decompressed)):
        assert_close(f, d, name=f"fused vs decompress+SDPA, step {step}", tolerance=LOGITS_TOLERANCE)

    tqgen.hf.uninstall_fused_tq4_kv(model)
    assert model.config._attn_implementation == "sdpa" and not cache.fused_mode
    restored = _greedy(model, ids)
    assert torch.equal(restored.sequences, sdpa.sequences)
    assert all(torch.equal(a, b) for a, b in zip(restored.logits, sdpa.logits))


def test_left_padded_batch_matches_each_sample_alone(device):
    model = tiny_causal_lm("llama", head_dim=64, kv_heads=2, initializer_range=0.02).to(device)
    long, short = _tokens(1, 9, seed=1), _tokens(1, 6, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)]).to(device)
    attention_mask = (batch != 0).long()
    # Sinks are the first positions of a row, pads in a left-padded one: a recent window only, of
    # exactly 3 tokens (a block of 1), so that it holds the same tokens with and without the pads.
    window = dict(sink_tokens=0, residual_length=3, residual_block=1)
    cache = tqgen.hf.enable(model, **window)
    together = _greedy(model, batch, cache, attention_mask=attention_mask)
    for row, prompt in enumerate((long, short)):
        alone = _greedy(model, prompt.to(device), tqgen.hf.enable(model, **window))
        assert torch.equal(together.sequences[row, -NEW:], alone.sequences[0, -NEW:])
        for step, (a, b) in enumerate(zip(together.logits, alone.logits)):
            assert_close(a[row], b[0], torch.float16, f"row {row} step {step}")
    tqgen.hf.uninstall_fused_tq4_kv(model)


def test_chunked_prefill_and_multi_token_steps(device):
    """Chunks of 4 and 3 tokens onto a non-empty compressed cache, and a layer kept in fp16:
    fused = "decompress + SDPA" with the same chunking."""
    model = tiny_causal_lm("qwen3", head_dim=64, kv_heads=2, initializer_range=0.02).to(device)
    tokens, chunks = _tokens(1, 14, seed=3).to(device), [7, 4, 3]
    decompressed = _step_logits(model, CompressedDynamicCache(model.config, k_bits=4, v_bits=3, skip_layers=[0], **EXACT),
                                tokens, chunks)
    cache = tqgen.hf.enable(model, k_bits=4, v_bits=3, skip_layers=[0], **EXACT)
    fused = _step_logits(model, cache, tokens, chunks)
    assert [type(layer) for layer in cache.layers] == [FullPrecisionLayer, CompressedLayer]
    for step, (f, d) in enumerate(zip(fused, decompressed)):
        assert_close(f, d, name=f"chunk {step}", tolerance=LOGITS_TOLERANCE)
    tqgen.hf.uninstall_fused_tq4_kv(model)


def test_beam_search_reorders_the_compressed_cache(device):
    """Beam search reorders the cache every step: fused beams = beams over "decompress + SDPA"."""
    model = tiny_causal_lm("llama", head_dim=64, kv_heads=1, layers=1, initializer_range=0.02).to(device)
    ids = _tokens(1, 8, seed=7).to(device)  # this prompt's beams swap rows mid-generation
    beams = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, early_stopping=True)
    expected = model.generate(ids, **cache_kwargs(model, CompressedDynamicCache(model.config, **EXACT), "generate"), **beams)
    cache = tqgen.hf.enable(model, **EXACT)
    got = model.generate(ids, **cache_kwargs(model, cache, "generate"), **beams)
    assert torch.equal(got, expected)
    assert cache.layers[0].batch == 3
    tqgen.hf.uninstall_fused_tq4_kv(model)


@pytest.mark.parametrize("assistance", ["prompt_lookup", "assistant_model"])
def test_assisted_decoding_crops_and_verifies_chunks(assistance, device):
    """Assisted decoding verifies multi-token drafts against the compressed cache and crops the
    rejected ones: same tokens as plain greedy decoding with the fused cache."""
    model = tiny_causal_lm("llama", head_dim=64, kv_heads=2, layers=1, initializer_range=0.02).to(device)
    if assistance == "prompt_lookup":
        assist = dict(prompt_lookup_num_tokens=3)
    else:
        assist = dict(assistant_model=tiny_causal_lm("llama", head_dim=64, layers=1, initializer_range=0.02, seed=1).to(device))
    ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]], device=device)
    greedy = model.generate(ids, max_new_tokens=5, do_sample=False,
                            **cache_kwargs(model, tqgen.hf.enable(model, **EXACT), "generate"))
    cache = tqgen.hf.enable(model, **EXACT)
    assisted = model.generate(ids, max_new_tokens=5, do_sample=False, **cache_kwargs(model, cache, "generate"), **assist)
    assert torch.equal(assisted, greedy)
    assert cache.get_seq_length() == greedy.shape[1] - 1
    tqgen.hf.uninstall_fused_tq4_kv(model)


SLIDING = {
    "qwen2": dict(use_sliding_window=True, sliding_window=6, max_window_layers=1),
    "gemma3": dict(sliding_window=6, layer_types=["full_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("family", sorted(SLIDING))
def test_sliding_window_layers_stay_uncompressed(family, device):
    """The upper layer attends over a 6-token window: it keeps transformers' window cache and the
    fused backend runs it through the vanilla kernel with the window mask."""
    model = tiny_causal_lm(family, head_dim=64, kv_heads=2, initializer_range=0.02, **SLIDING[family]).to(device)
    ids = _tokens(1, PROMPT, seed=5).to(device)
    sdpa = _greedy(model, ids)
    cache = tqgen.hf.enable(model)
    fused = _greedy(model, ids, cache)
    assert cache.is_sliding == [False, True] and isinstance(cache.layers[0], CompressedLayer)
    for step, (a, b) in enumerate(zip(fused.logits, sdpa.logits)):
        assert _cosine(a, b) >= 0.99, step
    tqgen.hf.uninstall_fused_tq4_kv(model)


def test_install_errors_and_exact_restore():
    model = tiny_causal_lm("llama", head_dim=64, attn_implementation="eager")
    with pytest.raises(TypeError, match="CompressedDynamicCache"):
        tqgen.hf.install_fused_tq4_kv(model, DynamicCache())
    with pytest.raises(AttributeError, match="config"):
        tqgen.hf.install_fused_tq4_kv(torch.nn.Linear(2, 2), CompressedDynamicCache())
    softcapped = tiny_causal_lm("gemma3", head_dim=64, attn_logit_softcapping=30.0)
    with pytest.raises(NotImplementedError, match="soft-caps"):
        tqgen.hf.enable(softcapped)
    tqgen.hf.install_triton_fa(model)
    first = tqgen.hf.enable(model)
    second = tqgen.hf.enable(model)
    assert not first.fused_mode and second.fused_mode
    assert model.config._attn_implementation == tqgen.hf.TRITON_FA_TQ4_KV
    tqgen.hf.uninstall_fused_tq4_kv(model)
    assert model.config._attn_implementation == "eager", "the implementation before tqgen, not the last one"
    assert not any(hasattr(m, "_tq4_cache") for m in model.modules())
