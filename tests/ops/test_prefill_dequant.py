"""Prefill over compressed K/V by dequantising first (``tqgen.ops.prefill_dequant``), next to the
fused compressed kernel, both against the float64 reference.

Every case runs both methods (``force_prefill_method``) on the same fresh random inputs, each into
a NaN-poisoned output, and holds both to the same tolerance.  A recorder checks what actually ran:
the vanilla prefill variant after one decompress launch per compressed operand (K and V in the
space ``to_original_space`` picks: chunks onto a longer cache rotate the query and the output,
whole prompts un-rotate the keys and values), or the fused variant alone.
Shapes are tiny (CPU interpreter): KV lengths off the block multiples, N_q 17..40.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tqgen.ops.attention as attention_ops
import tqgen.ops.decompress as decompress_ops
from attention_inputs import Problem, compress_operand, make_problem, random_length
from tqgen.compressed import CompressedTensor
from tqgen.spec import Family, VariantSpec
from tqgen.testing import assert_close
from tqgen.tuning import prefill_route
from tqgen.tuning.prefill_route import METHODS, force_prefill_method, prefill_method, to_original_space

MODES = {"k4v4": (4, 4), "k4": (4, None), "k3v3": (3, 3), "k2v2": (2, 2)}


@pytest.fixture
def launches(monkeypatch):
    """The variants launched, in order: prefill (attention) and decompress kernels."""
    seen: list[VariantSpec] = []
    for module, name in ((attention_ops, "prefill"), (decompress_ops, "decompress")):
        real = getattr(module, name)

        def spy(spec, *args, _real=real, **kwargs):
            seen.append(spec)
            return _real(spec, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return seen


def check_both(problem: Problem, launches: list[VariantSpec], causal: bool, mask: torch.Tensor | None = None,
               name: str = "") -> dict[str, torch.Tensor]:
    """Both methods against one reference, same tolerance; asserts which kernels each one launched."""
    expected = problem.reference(causal, mask)
    batch, q_heads, n_q, _ = problem.q.shape
    _, kv_heads, n_kv, _ = problem.k.shape
    original = to_original_space(batch * q_heads * n_q, batch * kv_heads * n_kv)
    bits = [x.bits for x in (problem.k, problem.v) if isinstance(x, CompressedTensor)]
    k_compressed, v_compressed = (isinstance(x, CompressedTensor) for x in (problem.k, problem.v))
    outs = {}
    for method in METHODS:
        launches.clear()
        with force_prefill_method(method):
            outs[method] = problem.run(causal, mask, schedule="prefill")
        assert_close(outs[method], expected, problem.q.dtype, f"{method} {name} seed={problem.seed}")
        attention = [s for s in launches if s.family is Family.ATTN_PREFILL]
        assert len(attention) == 1 and attention[0].compressed == (method == "fused") == attention[0].rotate
        codecs = [s for s in launches if s.family is Family.DECOMPRESS]
        if method == "dequant":
            assert [s.k_bits for s in codecs] == bits
            assert [s.rotate for s in codecs] == [original] * (k_compressed + v_compressed)
        else:
            assert codecs == []
    return outs


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head_dim,group", [(64, 8), (80, 2), (128, 4)])
def test_chunk_onto_cache(mode: str, head_dim: int, group: int, launches, device: str) -> None:
    """Causal N_q in 17..40 onto a longer cache (bottom-right): K and V in the rotated space."""
    k_bits, v_bits = MODES[mode]
    n_q = random_length(17, 40)
    n_kv = n_q * group + random_length(1, 60)
    problem = make_problem(n_q=n_q, n_kv=n_kv, head_dim=head_dim, group=group, k_bits=k_bits, v_bits=v_bits,
                           device=device)
    assert not to_original_space(n_q * group, n_kv)
    check_both(problem, launches, causal=True, name=f"n_q={n_q} n_kv={n_kv}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", [1, 8])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_whole_prompt(mode: str, group: int, causal: bool, launches, device: str) -> None:
    """N_q == N_kv, batch 2, two KV heads: K and V in the original space (no more keys than queries)."""
    k_bits, v_bits = MODES[mode]
    n = random_length(17, 40)
    problem = make_problem(batch=2, kv_heads=2, n_q=n, n_kv=n, head_dim=128, group=group,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    check_both(problem, launches, causal, name=f"n={n} causal={causal}")


def test_more_queries_than_keys(launches, device: str) -> None:
    """Causal N_q > N_kv: the first N_q - N_kv query positions see no key and output 0."""
    problem = make_problem(n_q=40, n_kv=10, head_dim=64, group=2, k_bits=4, v_bits=4, device=device)
    for out in check_both(problem, launches, causal=True).values():
        assert torch.all(out[:, :, :30] == 0)


@pytest.mark.parametrize("n_q,n_kv", [(20, 150), (33, 33)], ids=["chunk", "square"])
def test_float32_and_mixed_widths(n_q: int, n_kv: int, launches, device: str) -> None:
    """fp32 q (fp32 scratch) and K4/V3, in both spaces."""
    problem = make_problem(n_q=n_q, n_kv=n_kv, head_dim=96, group=2, k_bits=4, v_bits=3, dtype=torch.float32,
                           device=device)
    check_both(problem, launches, causal=True)


@pytest.mark.parametrize("n_q,n_kv", [(20, 64), (64, 64)], ids=["chunk", "square"])
def test_fp16_extremes(n_q: int, n_kv: int, launches, device: str) -> None:
    """fp16 K/V entries up to 6e4 (norms past 65504) and a V whose rotated coordinates exceed
    fp16 while the output fits: the headroom keeps the fp16 scratch finite, in both K spaces."""
    gen = torch.Generator().manual_seed(4321)
    q = (torch.randn(1, 2, n_q, 64, generator=gen) * 0.01).half().to(device)
    k = (torch.randn(1, 1, n_kv, 64, generator=gen) * 2e4).clamp(-6.0e4, 6.0e4).half().to(device)
    row = torch.full((64,), 4.0e4)
    row[1::2] = -4.0e4
    v = (row + torch.randn(n_kv, 64, generator=gen) * 1e3).clamp(-6.0e4, 6.0e4).half().expand(1, 1, n_kv, 64)
    k_in, k_ref = compress_operand(k, 4)
    v_in, v_ref = compress_operand(v.to(device), 4)
    assert k_in.norms.max().item() > 65504 and v_in.norms.max().item() > 65504
    problem = Problem(q, k_in, v_in, k_ref, v_ref, seed=4321)
    for out in check_both(problem, launches, causal=True).values():
        assert torch.isfinite(out).all()


# ------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", ["k4v4", "k4"])
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("n_q,n_kv", [(20, 75), (40, 40)], ids=["chunk", "square"])
def test_masks(mode: str, kind: str, n_q: int, n_kv: int, launches, device: str) -> None:
    """Per-batch masks (batch 2, two KV heads), a fully masked row (-> 0), alone and with causal."""
    k_bits, v_bits = MODES[mode]
    problem = make_problem(batch=2, kv_heads=2, n_q=n_q, n_kv=n_kv, head_dim=64, group=2,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    keep = torch.rand(2, 1, n_q, n_kv, device=device) > 0.3
    keep[1, :, :, n_kv - 15:] = False  # the second sequence is padded differently
    keep[0, :, 5] = False  # a fully masked row
    mask = keep if kind == "bool" else torch.where(keep, 0.5, float("-inf")).to(problem.q.dtype)
    for causal in (False, True):
        for out in check_both(problem, launches, causal, mask, name=f"{kind} causal={causal}").values():
            assert torch.all(out[0, :, 5] == 0)


# ------------------------------------------------------------ centred keys
def centred(problem: Problem, bits: int, shift: float = 4.0) -> Problem:
    """``problem`` with keys sharing a large mean, stored centred: codes of k - mu, ``offset`` = mu.

    The reference sees the keys as ``TurboQuant.decompress`` returns them (the mean added back):
    reading the centred codes as they are must be exact, since q . mu is the same for every key."""
    k = problem.k_ref
    gen = torch.Generator().manual_seed(problem.seed + 1)
    k = k + shift * torch.randn(k.shape[0], k.shape[1], 1, k.shape[-1], generator=gen, dtype=k.dtype).to(k.device)
    mu = k.float().mean(dim=2, keepdim=True)
    codes, decoded = compress_operand(k.float() - mu, bits)
    problem.k = dataclasses.replace(codes, offset=mu)
    problem.k_ref = decoded + mu.double()
    return problem


@pytest.mark.parametrize("mode", ["k4v4", "k4", "k2v2"])
@pytest.mark.parametrize("n_q,n_kv", [(24, 130), (30, 30)], ids=["chunk", "square"])
def test_centred_keys(mode: str, n_q: int, n_kv: int, launches, device: str) -> None:
    k_bits, v_bits = MODES[mode]
    problem = centred(make_problem(batch=2, n_q=n_q, n_kv=n_kv, head_dim=64, group=4, v_bits=v_bits, device=device),
                      k_bits)
    check_both(problem, launches, causal=True, name="centred keys")


# ----------------------------------------------------------------- routing
def test_routing_rule(monkeypatch) -> None:
    """Compressed prefill: dequant on a GPU, fused in the interpreter; the switch overrides both."""
    k4v4 = VariantSpec(Family.ATTN_PREFILL, 128, 4, 4, 4, True, True)
    fp = VariantSpec(Family.ATTN_PREFILL, 128, None, None, 4, True)
    decode = VariantSpec(Family.ATTN_DECODE, 128, 4, 4, 4, True, True)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(prefill_route, "interpreting", lambda: False)
    assert prefill_method(k4v4, cuda) == "dequant"
    assert prefill_method(fp, cuda) == prefill_method(decode, cuda) == "fused"
    assert prefill_method(k4v4, cpu) == "fused"
    with force_prefill_method("fused"):
        assert prefill_method(k4v4, cuda) == "fused"
        with force_prefill_method("dequant"):
            assert prefill_method(k4v4, cpu) == "dequant" and prefill_method(fp, cpu) == "fused"
        assert prefill_method(k4v4, cuda) == "fused"
    assert prefill_method(k4v4, cuda) == "dequant"
    monkeypatch.setattr(prefill_route, "interpreting", lambda: True)
    assert prefill_method(k4v4, cuda) == "fused"
    with pytest.raises(ValueError, match="method must be one of"):
        with force_prefill_method("fast"):
            pass
    # whole prompts with GQA un-rotate the cache, chunks rotate the queries; ties: original
    assert to_original_space(32 * 8192, 8 * 8192) and to_original_space(100, 100)
    assert not to_original_space(32 * 1024, 8 * 32768)


def test_default_route_of_this_device(launches, device: str) -> None:
    """Without the switch a compressed prefill call takes the rule's method (the interpreter: fused)."""
    problem = make_problem(n_q=20, n_kv=50, head_dim=64, group=2, k_bits=4, v_bits=4, device=device)
    problem.check(causal=True, schedule="prefill")
    method = prefill_method(VariantSpec(Family.ATTN_PREFILL, 64, 4, 4, 2, True, True), torch.device(device))
    assert [s.compressed for s in launches if s.family is Family.ATTN_PREFILL] == [method == "fused"]
