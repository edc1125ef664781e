"""GPU-only checks of the static compressed cache: CUDA-graph replay of whole decode steps, transformers'
own compiled generate, and the cache's reported bytes against the CUDA allocator."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import cache_argument
from tqgen.testing import assert_close

pytestmark = pytest.mark.gpu

PROMPT, STEPS = 20, 64


def _model():
    return tiny_causal_lm("llama", head_dim=128, heads=8, kv_heads=2, hidden=256, initializer_range=0.02,
                          dtype=torch.float16).cuda()


@torch.no_grad()
def _decode(model, forward, cache, ids, compiled: bool):
    """Eager prefill, then STEPS greedy steps through ``forward``: (tokens, logits) per step."""
    name = cache_argument(model)
    out = model(input_ids=ids, use_cache=True, **{name: cache})
    tokens, logits = [out.logits[:, -1].argmax(-1)], [out.logits[:, -1].float()]
    for _ in range(STEPS):
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = forward(input_ids=tokens[-1][:, None], use_cache=True, **{name: cache})
        tokens.append(out.logits[:, -1].argmax(-1))
        logits.append(out.logits[:, -1].float())  # a copy: the next replay overwrites the graph's output
    return torch.stack(tokens), logits


def test_cuda_graph_replay_matches_eager():
    """torch.compile(mode="reduce-overhead", fullgraph=True): 64 replayed decode steps give eager's
    greedy tokens, logits within fp16 rounding."""
    model = _model()
    ids = torch.randint(3, 128, (2, PROMPT), generator=torch.Generator().manual_seed(0)).cuda()
    capacity = PROMPT + STEPS + 1
    eager_tokens, eager_logits = _decode(model, model, tqgen.hf.enable(model, static=True, max_cache_len=capacity),
                                         ids, compiled=False)
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    cache = tqgen.hf.enable(model, static=True, max_cache_len=capacity)
    tokens, logits = _decode(model, compiled, cache, ids, compiled=True)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    torch._dynamo.reset()
    assert torch.equal(tokens, eager_tokens)
    for step, (a, b) in enumerate(zip(logits, eager_logits)):
        assert_close(a, b, torch.float16, f"replayed vs eager logits, step {step}")


def test_generate_compiles_with_the_static_cache():
    """generate() auto-compiles the decode steps (CUDA, compileable cache): same tokens as with disable_compile."""
    model = _model()
    ids = torch.randint(3, 128, (2, PROMPT), generator=torch.Generator().manual_seed(1)).cuda()
    kwargs = dict(max_new_tokens=32, do_sample=False)
    name = cache_argument(model)
    eager = model.generate(ids, disable_compile=True, **{name: tqgen.hf.enable(model, static=True, max_cache_len=64)},
                           **kwargs)
    torch._dynamo.reset()
    compiled = model.generate(ids, **{name: tqgen.hf.enable(model, static=True, max_cache_len=64)}, **kwargs)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    torch._dynamo.reset()
    assert torch.equal(compiled, eager)


_MEASURE = """
import torch
from tqgen.hf import CompressedStaticCache
from testing_models import tiny_causal_lm
config = tiny_causal_lm("llama", head_dim=128, heads=8, kv_heads=2, hidden=256, layers=4).config
warm = CompressedStaticCache(config, max_cache_len=64)
warm.early_initialization(2, 2, 128, torch.float16, torch.device("cuda"))  # codebooks/rotation cached for good
del warm
torch.cuda.synchronize()
before = torch.cuda.memory_allocated()
cache = CompressedStaticCache(config, max_cache_len=4096, k_bits=4, v_bits=3, skip_layers=[0])
cache.early_initialization(2, 2, 128, torch.float16, torch.device("cuda"))
torch.cuda.synchronize()
tensors = sum(len(layer._tensors()) if hasattr(layer, "_tensors") else 3 for layer in cache.layers) + 1
print(torch.cuda.memory_allocated() - before, cache.nbytes(), tensors)
"""


def test_reported_bytes_match_cuda_allocations():
    """nbytes() is what the allocator handed out for the cache, up to its 512-byte rounding per tensor
    (measured in a fresh process, as the dynamic cache's test does)."""
    tests = str(Path(__file__).resolve().parents[1])  # testing_models lives in tests/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH"))))}
    result = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr
    allocated, nbytes, tensors = map(int, result.stdout.split()[-3:])
    assert 0 <= allocated - nbytes <= 512 * tensors, (allocated, nbytes, tensors)
