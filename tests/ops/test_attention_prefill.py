"""The prefill attention kernels against the float64 reference, over the whole variant matrix.

Every case runs under the CPU interpreter, so shapes are tiny: one KV head, a few
dozen query rows, KV lengths that are rarely a multiple of the block.
"""

from __future__ import annotations

import pytest
import torch

from attention_inputs import make_problem, problem_for, random_length
from tqgen.ops import attention as attention_ops
from tqgen.quant import rotation_matrix
from tqgen.spec import Family, VariantSpec, default_matrix, reduce_spec
from tqgen.testing import assert_close, poison_
from tqgen.tuning import config_for

PREFILL_MATRIX = [s for s in default_matrix() if s.family is Family.ATTN_PREFILL]


@pytest.mark.parametrize("spec", PREFILL_MATRIX, ids=lambda s: s.id)
def test_prefill_matrix(spec: VariantSpec, device: str) -> None:
    """Each committed prefill variant: N_q in 17..20 (x group rows), N_kv in 1..130."""
    problem = problem_for(spec, n_q=random_length(17, 20), n_kv=random_length(1, 130), device=device)
    problem.check(spec.causal, schedule="prefill", name=spec.id)


@pytest.mark.parametrize("group", range(1, 17))
def test_every_gqa_group(group: int, device: str) -> None:
    """Groups outside the committed matrix are rendered on demand."""
    problem = make_problem(n_q=17, n_kv=70, head_dim=64, group=group, k_bits=4, v_bits=4, device=device)
    problem.check(causal=True, schedule="prefill", name=f"group {group}")


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4)], ids=["fp", "k4v4"])
@pytest.mark.parametrize("n_q,n_kv", [(1, 1), (1, 90), (40, 1), (17, 64), (33, 128)])
def test_lengths(kv_mode, n_q: int, n_kv: int, device: str) -> None:
    """Length 1 on either side and exact multiples of the block, causal and not."""
    k_bits, v_bits = kv_mode
    problem = make_problem(n_q=n_q, n_kv=n_kv, head_dim=64, group=2, k_bits=k_bits, v_bits=v_bits, device=device)
    for causal in (False, True):
        problem.check(causal, schedule="prefill", name=f"n_q={n_q} n_kv={n_kv} causal={causal}")


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 3)], ids=["fp", "k4v3"])
def test_chunked_prefill_onto_cache(kv_mode, device: str) -> None:
    """Causal N_q < N_kv: the new queries sit at the end (bottom-right alignment)."""
    k_bits, v_bits = kv_mode
    problem = make_problem(n_q=24, n_kv=150, head_dim=64, group=2, k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check(causal=True, schedule="prefill")


@pytest.mark.parametrize("kv_mode", [(None, None), (2, 2)], ids=["fp", "k2v2"])
def test_more_queries_than_keys_causal(kv_mode, device: str) -> None:
    """Causal N_q > N_kv: the first N_q - N_kv query positions see no key and output 0."""
    k_bits, v_bits = kv_mode
    problem = make_problem(n_q=40, n_kv=10, head_dim=32, group=2, k_bits=k_bits, v_bits=v_bits, device=device)
    out = problem.check(causal=True, schedule="prefill")
    assert torch.all(out[:, :, :30] == 0)


@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4)], ids=["fp", "k4v4"])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masks(kv_mode, kind: str, device: str) -> None:
    """Per-batch masks (batch > 1), a fully masked row (-> 0), combined with causal."""
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, n_q=20, n_kv=75, head_dim=64, group=2, kv_heads=2,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    keep = torch.rand(2, 1, 20, 75, device=device) > 0.3
    keep[1, :, :, 60:] = False  # the second sequence is padded differently
    keep[0, :, 5] = False  # a fully masked row
    mask = keep if kind == "bool" else torch.where(keep, 0.5, float("-inf")).to(problem.q.dtype)
    for causal in (False, True):
        out = problem.check(causal, mask, schedule="prefill", name=f"{kind} causal={causal}")
        assert torch.all(out[0, :, 5] == 0)


def test_mask_broadcast_shapes(device: str) -> None:
    """[N_q, N_kv] and [B, 1, 1, N_kv] masks broadcast (strides of 0), additive finite values."""
    problem = make_problem(batch=2, n_q=18, n_kv=50, head_dim=32, group=4, k_bits=4, device=device)
    problem.check(False, torch.randn(18, 50, device=device), schedule="prefill")
    problem.check(True, torch.rand(2, 1, 1, 50, device=device) > 0.2, schedule="prefill")


@pytest.mark.parametrize("kv_mode", [(None, None), (3, 3)], ids=["fp", "k3v3"])
def test_batch_and_heads(kv_mode, device: str) -> None:
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=3, kv_heads=2, n_q=19, n_kv=67, head_dim=96, group=2,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check(causal=True, schedule="prefill")


def test_non_contiguous_query(device: str) -> None:
    """A [B, N, H, D] query transposed to [B, H, N, D] is read through its strides."""
    problem = make_problem(batch=2, n_q=20, n_kv=40, head_dim=64, group=2, k_bits=4, v_bits=4, device=device)
    problem.q = problem.q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not problem.q.is_contiguous()
    problem.check(causal=True, schedule="prefill")
    # a strided last dim is copied, never misread
    wide = torch.randn(*problem.q.shape[:3], 128, device=device, dtype=problem.q.dtype)
    problem.q = wide[..., ::2]
    problem.check(causal=False, schedule="prefill")


def test_float32(device: str) -> None:
    problem = make_problem(n_q=20, n_kv=70, head_dim=80, group=2, k_bits=4, v_bits=3, dtype=torch.float32, device=device)
    problem.check(causal=True, schedule="prefill")


@pytest.mark.parametrize("kv_mode", [(4, 4), (3, None), (None, 2)], ids=["k4v4", "k3vfp", "kfpv2"])
def test_fused_equals_decompress_then_vanilla(kv_mode, device: str) -> None:
    """Fused compressed attention == vanilla attention on the decompressed fp16 K/V."""
    k_bits, v_bits = kv_mode
    problem = make_problem(n_q=21, n_kv=100, head_dim=64, group=4, k_bits=k_bits, v_bits=v_bits, device=device)
    fused = problem.run(causal=True, schedule="prefill")
    problem.k, problem.v = problem.k_ref.to(problem.q.dtype), problem.v_ref.to(problem.q.dtype)
    vanilla = problem.run(causal=True, schedule="prefill")
    assert_close(fused, vanilla, torch.float16, f"fused vs vanilla seed={problem.seed}")


@pytest.mark.parametrize("family", [Family.ATTN_PREFILL, Family.ATTN_DECODE])
def test_unrotated_variant(family: Family, device: str) -> None:
    """rotate=False variants take a pre-rotated query and return the rotated-space output."""
    n_q = 20 if family is Family.ATTN_PREFILL else 2
    problem = make_problem(n_q=n_q, n_kv=90, head_dim=80, group=2, k_bits=3, v_bits=4, device=device)
    spec = VariantSpec(family, 80, 3, 4, 2, True, rotate=False)
    pi = rotation_matrix(80, device=device)
    q_rot = (problem.q.float() @ pi.T).to(problem.q.dtype)
    out = poison_(torch.empty_like(problem.q))
    config = config_for(spec, "cpu")
    if family is Family.ATTN_PREFILL:
        attention_ops.prefill(spec, config, q_rot, problem.k, problem.v, out, 80**-0.5)
    else:
        reduce = reduce_spec(spec)
        attention_ops.decode(spec, config, reduce, config_for(reduce, "cpu"), q_rot, problem.k, problem.v, out, 80**-0.5)
    assert_close((out.double() @ pi.double()), problem.reference(causal=True), torch.float16, f"seed={problem.seed}")


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (4, 3)], ids=["fp", "k4v4", "k4v3"])
def test_bfloat16_gpu(kv_mode, device: str) -> None:
    k_bits, v_bits = kv_mode
    problem = make_problem(batch=2, kv_heads=4, n_q=300, n_kv=700, head_dim=128, group=4,
                           k_bits=k_bits, v_bits=v_bits, dtype=torch.bfloat16, device=device)
    problem.check(causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4), (2, 2), (3, 3)], ids=["fp", "k4v4", "k2v2", "k3v3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_head_dim_256_gpu(kv_mode, dtype, device: str) -> None:
    k_bits, v_bits = kv_mode
    problem = make_problem(kv_heads=2, n_q=257, n_kv=1000, head_dim=256, group=2,
                           k_bits=k_bits, v_bits=v_bits, dtype=dtype, device=device)
    problem.check(causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_mode", [(None, None), (4, 4)], ids=["fp", "k4v4"])
def test_long_prefill_gpu(kv_mode, device: str) -> None:
    """A real-size chunk: 1024 queries onto a 8192-token cache, 8 KV heads, group 4."""
    k_bits, v_bits = kv_mode
    problem = make_problem(kv_heads=8, n_q=1024, n_kv=8192, head_dim=128, group=4,
                           k_bits=k_bits, v_bits=v_bits, device=device)
    problem.check(causal=True)


def test_a_config_that_does_not_fit_steps_down(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch whose config needs more shared memory than the GPU has (fp32 inputs, a mask tile
    per stage) retries with fewer stages, then narrower tiles, and later launches start there."""
    from triton.runtime.errors import OutOfResources

    from tqgen.ops import launch

    tried = []
    real = launch.LeanKernel._launch

    def fake_limit(self, grid, *args, **kwargs):  # pretend only one-stage, <= 32-key tiles fit
        tried.append((kwargs["num_stages"], kwargs["BLOCK_N"]))
        if kwargs["num_stages"] > 1 or kwargs["BLOCK_N"] > 32:
            raise OutOfResources(262144, 232448, "shared memory")
        return real(self, grid, *args, **kwargs)

    monkeypatch.setattr(launch.LeanKernel, "_launch", fake_limit)
    monkeypatch.setattr(attention_ops, "_FITTED", {})
    problem = make_problem(n_q=20, n_kv=70, head_dim=64, group=2, dtype=torch.float32, device=device)
    spec = VariantSpec(Family.ATTN_PREFILL, 64, None, None, 2, True)
    config = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3}
    for _ in range(2):
        out = poison_(torch.empty_like(problem.q))
        attention_ops.prefill(spec, config, problem.q, problem.k, problem.v, out, 64 ** -0.5)
        assert_close(out, problem.reference(causal=True), torch.float32, f"seed={problem.seed}")
    assert tried == [(3, 128), (2, 128), (1, 128), (1, 64), (1, 32), (1, 32)]
