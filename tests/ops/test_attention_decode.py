"""The split-K decode kernels (+ decode_reduce) against the float64 reference.

Under the interpreter the SM count is 2, so a KV head is split at most 4 ways here;
``tests/tuning/test_splits.py`` checks the policy itself with real SM counts.
"""

from __future__ import annotations

import math

import pytest
import torch

from attention_inputs import make_problem, problem_for, random_length
from tqgen.ops import attention as attention_ops
from tqgen.spec import Family, VariantSpec, default_matrix
from tqgen.testing import assert_close

DECODE_MATRIX = [s for s in default_matrix() if s.family is Family.ATTN_DECODE]


@pytest.mark.parametrize("spec", DECODE_MATRIX, ids=lambda s: s.id)
def test_decode_matrix(spec: VariantSpec, device: str) -> None:
    """Each committed decode variant: N_q = 1 (3 when causal), N_kv in 1..150 (1 or 2 splits)."""
    n_q = 3 if spec.causal else 1
    problem = problem_for(spec, n_q=n_q, n_kv=random_length(1, 150), device=device)
    problem.check(spec.causal, schedule="decode", name=spec.id)


@pytest.mark.parametrize("group", range(1, 17))
def test_every_gqa_group(group: int, device: str) -> None:
    problem = make_problem(n_q=1, n_kv=70, head_dim=64, group=group, k_bits=4, v_bits=4, device=device)
    problem.check(schedule="decode", name=f"group {group}")


@pytest.mark.parametrize("n_q,group", [(16, 2), (16, 16), (5, 3)])
def test_many_query_rows(n_q: int, group: int, device: str) -> None:
    """Up to 16 positions x 16 heads = 256 rows in one tile (speculative decoding)."""
    problem = make_problem(n_q=n_q, n_kv=80, head_dim=32, group=group, k_bits=2, v_bits=2, device=device)
    problem.check(causal=True, schedule="decode", name=f"n_q={n_q} group={group}")


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (3, None)], ids=["fp", "k4v4", "k3vfp"])
def test_several_splits(kv_mode, device: str) -> None:
    """N_kv = 300 on one KV head: 3 splits, the last one partial."""
    k_bits, v_bits = kv_mode
    problem = make_problem(n_q=2, n_kv=300, head_dim=64, group=2, k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check(causal=True, schedule="decode")


@pytest.mark.parametrize("n_q,n_kv", [(1, 1), (3, 1), (5, 2), (4, 64)])
def test_short_caches(n_q: int, n_kv: int, device: str) -> None:
    """N_kv of 1, causal N_q > N_kv (empty rows -> 0), and an exact block."""
    problem = make_problem(n_q=n_q, n_kv=n_kv, head_dim=32, group=4, k_bits=4, v_bits=3, device=device)
    for causal in (False, True):
        out = problem.check(causal, schedule="decode", name=f"n_q={n_q} n_kv={n_kv} causal={causal}")
        if causal and n_q > n_kv:
            assert torch.all(out[:, :, : n_q - n_kv] == 0)


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4)], ids=["fp", "k4v4"])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masks(kv_mode, kind: str, device: str) -> None:
    """Different padding per sequence (batch > 1), a fully masked row, with causal."""
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, kv_heads=2, n_q=3, n_kv=140, head_dim=64, group=2,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    keep = torch.rand(2, 4, 3, 140, device=device) > 0.2
    keep[0, :, :, :70] = False  # left padding of sequence 0, spanning a whole split
    keep[1, 3, 1] = False  # one fully masked row
    mask = keep if kind == "bool" else torch.where(keep, -0.25, float("-inf")).to(torch.float32)
    for causal in (False, True):
        out = problem.check(causal, mask, schedule="decode", name=f"{kind} causal={causal}")
        assert torch.all(out[1, 3, 1] == 0)


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 3), (None, 2)], ids=["fp", "k4v3", "kfpv2"])
def test_decode_equals_prefill(kv_mode, device: str) -> None:
    """Both schedules on the same inputs agree (causal, with a mask)."""
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, n_q=5, n_kv=130, head_dim=96, group=4, k_bits=k_bits, v_bits=v_bits, device=device)
    mask = torch.rand(2, 1, 5, 130, device=device) > 0.1
    decode = problem.run(True, mask, schedule="decode")
    prefill = problem.run(True, mask, schedule="prefill")
    assert_close(decode, prefill, problem.q.dtype, f"decode vs prefill seed={problem.seed}")


def test_hf_layout_query(device: str) -> None:
    """A decode query that arrives as [B, 1, H, D] and is transposed (not copied)."""
    problem = make_problem(batch=2, kv_heads=2, n_q=1, n_kv=90, head_dim=64, group=4, k_bits=4, v_bits=4, device=device)
    problem.q = problem.q.transpose(1, 2).contiguous().transpose(1, 2)
    problem.check(schedule="decode")


def test_workspace_is_reused(device: str) -> None:
    """Repeated steps (growing N_kv) reuse the cached workspace: nothing new is allocated."""
    problem = make_problem(n_q=1, n_kv=100, head_dim=32, group=2, k_bits=4, v_bits=4, device=device)
    problem.run(schedule="decode")
    before = dict(attention_ops._WORKSPACE)
    problem.run(schedule="decode")
    assert attention_ops._WORKSPACE.keys() == before.keys()
    assert all(attention_ops._WORKSPACE[k] is before[k] for k in before)


def test_workspace_is_bounded(device: str) -> None:
    """Many shapes (batch sizes x query lengths) share one grown buffer per stream: the outgrown
    ones together stay smaller than it, and release_workspaces frees them."""
    for batch in (1, 2, 3):
        for n_q in (1, 2, 5):
            problem = make_problem(batch=batch, n_q=n_q, n_kv=64, head_dim=32, group=2, k_bits=4, v_bits=4, device=device)
            problem.check(schedule="decode", name=f"batch {batch} n_q {n_q}")
    buffers = [b for k, b in attention_ops._WORKSPACE.items() if k[0].type == torch.device(device).type]
    assert len(buffers) == 1
    assert sum(b.numel() for b in attention_ops._RETIRED) < buffers[0].numel()
    attention_ops.release_workspaces()
    assert not attention_ops._RETIRED


@pytest.mark.gpu
def test_two_streams_decode_concurrently(device: str) -> None:
    """Two streams decoding different inputs at once get the results each gets alone."""
    if device != "cuda":
        pytest.skip("needs CUDA streams")
    problems = [make_problem(batch=2, n_q=1, n_kv=4000 + 999 * i, head_dim=128, group=4, kv_heads=2, k_bits=4,
                             v_bits=4, device=device) for i in range(2)]
    alone = [p.run(schedule="decode") for p in problems]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in problems]
    outs = []
    for _ in range(3):
        for stream, p in zip(streams, problems):
            with torch.cuda.stream(stream):
                outs.append(p.run(schedule="decode"))
    torch.cuda.synchronize()
    for i, out in enumerate(outs):
        assert torch.equal(out, alone[i % 2]), f"stream {i % 2} differs from its result alone"


# ------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (4, None), (3, 3), (2, 2)], ids=["fp", "k4v4", "k4vfp", "k3v3", "k2v2"])
def test_long_cache_gpu(kv_mode, device: str) -> None:
    """N_kv = 32768 with the benchmark's head layout (8 KV heads, group 4, D 128)."""
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, kv_heads=8, n_q=1, n_kv=32768, head_dim=128, group=4,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check()


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (4, 3)], ids=["fp", "k4v4", "k4v3"])
def test_bfloat16_gpu(kv_mode, device: str) -> None:
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=3, kv_heads=4, n_q=4, n_kv=5000, head_dim=128, group=8,
                           k_bits=k_bits, v_bits=v_bits, dtype=torch.bfloat16, device=device)
    problem.check(causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (3, 3)], ids=["fp", "k4v4", "k3v3"])
def test_head_dim_256_gpu(kv_mode, device: str) -> None:
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, kv_heads=2, n_q=2, n_kv=3000, head_dim=256, group=4,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check(causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4)], ids=["fp", "k4v4"])
def test_cuda_graph_capture_gpu(kv_mode, device: str) -> None:
    """The decode path with ``out=`` given captures into a CUDA graph and replays correctly."""
    from tqgen.attention import attention

    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, kv_heads=8, n_q=1, n_kv=4096, head_dim=128, group=4,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    out = torch.empty_like(problem.q)
    attention(problem.q, problem.k, problem.v, out=out)  # warm-up: compile, caches, workspace
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attention(problem.q, problem.k, problem.v, out=out)
    for _ in range(2):
        problem.q.copy_(torch.randn_like(problem.q))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, problem.reference(), problem.q.dtype, f"graph replay seed={problem.seed}")
    assert math.isfinite(out.float().abs().max().item())
