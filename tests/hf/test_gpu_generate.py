"""GPU-only checks of the HF integration: fp16/bf16 models, longer contexts, real allocations."""

import subprocess
import sys
import pytest
import torch
from transformers import DynamicCache

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen.hf import CompressedDynamicCache, cache_kwargs
from tqgen.testing import assert_close

pytestmark = pytest.mark.gpu


@torch.no_grad()
def _step_logits(model, cache, tokens: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    """Prefill ``prompt`` tokens, then one token per step: the last logits of each forward."""
    logits = [model(tokens[:, :prompt], **cache_kwargs(model, cache)).logits[:, -1].float()]
    for t in range(prompt, tokens.shape[1]):
        logits.append(model(tokens[:, t : t + 1], **cache_kwargs(model, cache)).logits[:, -1].float())
    return logits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_cache_half_precision_long_prompt(dtype):
    """300-token prompt (several KV tiles, split-K decode), batch 2: fused = "decompress + SDPA" within
    the dtype's rounding and cosine >= 0.99 against SDPA with the exact 16-bit cache."""
    model = tiny_causal_lm("llama", head_dim=128, heads=8, kv_heads=2, hidden=256, initializer_range=0.02, dtype=dtype).cuda()
    tokens = torch.randint(3, 128, (2, 306), generator=torch.Generator().manual_seed(0)).cuda()
    reference = _step_logits(model, DynamicCache(), tokens, 300)
    decompressed = _step_logits(model, CompressedDynamicCache(model.config), tokens, 300)
    cache = tqgen.hf.enable(model)
    fused = _step_logits(model, cache, tokens, 300)
    tqgen.hf.uninstall_fused_tq4_kv(model)
    for step, (f, d, r) in enumerate(zip(fused, decompressed, reference)):
        assert_close(f, d, dtype, f"fused vs decompress+SDPA, step {step}")
        cosine = torch.nn.functional.cosine_similarity(f, r, dim=-1).min().item()
        assert cosine >= 0.99, (step, cosine)


def test_vanilla_backend_matches_sdpa_fp16():
    model = tiny_causal_lm("qwen3", head_dim=128, heads=8, kv_heads=2, hidden=256, initializer_range=0.02, dtype=torch.float16).cuda()
    ids = torch.randint(3, 128, (2, 200), generator=torch.Generator().manual_seed(1)).cuda()
    kwargs = dict(max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    sdpa = model.generate(ids, **kwargs)
    tqgen.hf.install_triton_fa(model)
    ours = model.generate(ids, **kwargs)
    tqgen.hf.disable(model)
    for step, (a, b) in enumerate(zip(ours.logits, sdpa.logits)):
        assert_close(a, b, torch.float16, f"step {step}")


_MEASURE_CACHE_ALLOCATIONS = """
import gc
import torch
from tqgen.hf import CompressedDynamicCache, cache_kwargs
k = torch.randn(4, 8, 1000, 128, dtype=torch.float16, device="cuda")
warm = CompressedDynamicCache(k_bits=4, v_bits=3)
warm.update(k[:, :, :8], k[:, :, :8], 0)  # past the sinks: rotation, codebooks, compress tables cached for good
del warm
gc.collect()  # a cache's layers and their quantizer closures form a cycle: free it now, not in the window
torch.cuda.synchronize()
before = torch.cuda.memory_allocated()
cache = CompressedDynamicCache(k_bits=4, v_bits=3, initial_capacity=4096)
for layer_idx in range(4):
    cache.update(k, k, layer_idx)
torch.cuda.synchronize()
print(torch.cuda.memory_allocated() - before, cache.nbytes())
"""


def test_reported_size_matches_cuda_allocations():
    """nbytes() is what the CUDA allocator handed out for the cache (up to its 512-byte rounding).

    Measured in a fresh process: in a test worker, tensors cached by earlier tests can be freed
    inside the measured window and make the allocator's count drift.
    """
    result = subprocess.run([sys.executable, "-c", _MEASURE_CACHE_ALLOCATIONS], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    allocated, nbytes = map(int, result.stdout.split()[-2:])
    # per token and head: K 64 B of 4-bit codes + 4 B norm, V 48 B of 3-bit codes + 4 B norm; and the
    # 4 exact sinks' K and V in fp16
    assert nbytes == 4 * (4 * 8 * 4096 * (68 + 52) + 4 * 8 * 4 * 2 * 128 * 2)
    # nbytes() leaves out each layer's fp32 key offset [B, H, 1, D] (centred keys)
    assert abs(allocated - nbytes - 4 * 4 * 8 * 128 * 4) <= 512 * 4 * 4, (allocated, nbytes)
