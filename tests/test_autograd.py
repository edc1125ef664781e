"""No kernel has a backward pass: with inputs that require grad, results carry a grad_fn whose
backward raises a clear error (never a tensor silently cut from the graph)."""

import pytest
import torch

from testing_models import tiny_causal_lm
import tqgen.hf
from tqgen import TurboQuant, attention
from tqgen.scores import fused_qk_scores

NO_BACKWARD = "has no backward pass"


def _qkv(device, n_q=3, n_kv=16, d=64):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, d, generator=gen).to(device) for n in (n_q, n_kv, n_kv)]


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("n_q", [3, 20])  # decode and prefill schedules
def test_attention_output_is_not_cut_from_the_graph(compressed, n_q, device):
    q, k, v = _qkv(device, n_q)
    if compressed:
        tq = TurboQuant(64, 4)
        k, v = tq.compress(k), tq.compress(v)
    with torch.no_grad():
        expected = attention(q, k, v)
    out = attention(q.requires_grad_(), k, v)
    assert out.requires_grad and out.grad_fn is not None
    torch.testing.assert_close(out.detach(), expected)
    with pytest.raises(RuntimeError, match=f"tqgen.attention {NO_BACKWARD}"):
        out.sum().backward()


def test_grad_through_mask_or_kv_is_caught(device):
    q, k, v = _qkv(device)
    mask = torch.zeros(1, 1, 3, 16, device=device, requires_grad=True)
    for args in ((q, k.requires_grad_(), v, None), (q, k.detach(), v, mask)):
        out = attention(args[0], args[1], args[2], attention_mask=args[3])
        with pytest.raises(RuntimeError, match=NO_BACKWARD):
            out.sum().backward()


def test_out_with_grad_is_refused(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="out= is not supported when an input requires grad"):
        attention(q.requires_grad_(), k, v, out=torch.empty_like(q))


def test_no_grad_results_are_plain(device):
    q, k, v = _qkv(device)
    q.requires_grad_()
    with torch.no_grad():
        assert attention(q, k, v).grad_fn is None
    with torch.inference_mode():
        assert attention(q, k, v).grad_fn is None


def test_fused_qk_scores_is_not_cut_from_the_graph(device):
    q, k, _ = _qkv(device)
    ct = TurboQuant(64, 4).compress(k)
    args = (ct.packed, ct.norms, ct.centroids, 0.125)
    out = fused_qk_scores(q.requires_grad_(), *args, n_q_heads=2, n_kv_heads=2)
    assert out.grad_fn is not None
    with pytest.raises(RuntimeError, match=f"tqgen.fused_qk_scores {NO_BACKWARD}"):
        out.sum().backward()


def test_training_through_the_hf_backend_raises(device):
    """install_triton_fa in train() mode: loss.backward() names the problem instead of leaving
    q_proj's gradient None."""
    model = tiny_causal_lm("llama", head_dim=64).to(device)
    tqgen.hf.install_triton_fa(model)
    model.train()
    ids = torch.randint(3, 100, (1, 6), device=device)
    loss = model(ids, labels=ids).loss
    with pytest.raises(RuntimeError, match=NO_BACKWARD):
        loss.backward()
    tqgen.hf.disable(model)
    model(ids, labels=ids).loss.backward()  # SDPA again: gradients flow
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
