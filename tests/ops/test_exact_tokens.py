"""Exact tokens beside compressed K/V (tqgen.ops.exact_tokens): decode's extra split-K partial and
prefill's decompress-and-concatenate route, against the float64 reference over the whole sequence.

Every problem draws fresh random inputs (the seed is in the failure message); outputs are
NaN-poisoned, so a row the kernels skip fails.
"""

from __future__ import annotations

import secrets

import pytest
import torch

from tqgen.compressed import CompressedTensor
from tqgen.ops.exact_tokens import ExactTokens, attention_with_exact, decode_attention_exact, exact_workspace_numel
from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix
from tqgen.testing import assert_close, poison_

D = 64


def _compressed(x: torch.Tensor, bits: int, offset: torch.Tensor | None) -> tuple[CompressedTensor, torch.Tensor]:
    """x (minus ``offset``) compressed with the float reference, and what it reads back as (+ offset, fp64)."""
    codebook = lloyd_max_codebook(x.shape[-1], bits).to(x.device)
    rotation = rotation_matrix(x.shape[-1], device=x.device)
    stored = x.float() - offset if offset is not None else x.float()
    packed, norms = reference.compress(stored, bits, rotation, codebook)
    back = reference.decompress(packed, norms, bits, x.shape[-1], rotation, codebook, dtype=torch.float64)
    if offset is not None:
        back = back + offset.double()
    return CompressedTensor(packed, norms, bits, x.shape[-1], codebook.centroids, rotation, offset), back


def _problem(*, n_q, n_head, n_mid, n_tail, group=2, kv_heads=2, batch=2, k_bits=4, v_bits=4, center=True,
             dtype=torch.float32, device="cpu", head_dim=D):
    """(q, k_mid, v_mid, exact, whole K, whole V (fp64, what the reference reads), seed)."""
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    n = n_head + n_mid + n_tail

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = randn(batch, kv_heads * group, n_q, head_dim)
    k = randn(batch, kv_heads, n, head_dim) + 0.7 * randn(1, kv_heads, 1, head_dim)  # a shared direction, as in real models
    v = randn(batch, kv_heads, n, head_dim)
    mid = slice(n_head, n_head + n_mid)
    mu = k[:, :, mid].float().mean(2, keepdim=True) if center and k_bits and n_mid else None
    k_in, k_mid_ref = _compressed(k[:, :, mid], k_bits, mu) if k_bits else (k[:, :, mid], k[:, :, mid].double())
    v_in, v_mid_ref = _compressed(v[:, :, mid], v_bits, None) if v_bits else (v[:, :, mid], v[:, :, mid].double())
    exact = ExactTokens(torch.cat([k[:, :, :n_head], k[:, :, n_head + n_mid:]], 2),
                        torch.cat([v[:, :, :n_head], v[:, :, n_head + n_mid:]], 2), n_head)
    k_ref = torch.cat([k[:, :, :n_head].double(), k_mid_ref, k[:, :, n_head + n_mid:].double()], 2)
    v_ref = torch.cat([v[:, :, :n_head].double(), v_mid_ref, v[:, :, n_head + n_mid:].double()], 2)
    return q, k_in, v_in, exact, k_ref, v_ref, seed


def _run(q, k, v, exact, causal=False, mask=None, schedule="auto"):
    out = poison_(torch.empty(q.shape, dtype=q.dtype, device=q.device))
    result = attention_with_exact(q, k, v, exact, None, causal, mask, out=out, schedule=schedule)
    assert result is out
    return out


@pytest.mark.parametrize("n_head,n_mid,n_tail", [(4, 1, 0), (1, 77, 0), (4, 130, 5), (0, 70, 33), (2, 200, 17)])
@pytest.mark.parametrize("bits", [(4, 4), (3, None), (None, 2), (2, 3)], ids=["k4v4", "k3", "v2", "k2v3"])
def test_decode_matches_float64_reference(n_head, n_mid, n_tail, bits, device):
    """One decode step (and 3 query rows) over sinks + compressed middle + recent window, GQA, batch 2."""
    for n_q in (1, 3):
        q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=n_q, n_head=n_head, n_mid=n_mid, n_tail=n_tail,
                                                      k_bits=bits[0], v_bits=bits[1], device=device)
        out = _run(q, k, v, exact)
        assert_close(out, reference.reference_attention(q, k_ref, v_ref), q.dtype, f"n_q={n_q} seed={seed}")


@pytest.mark.parametrize("group", [1, 4, 8])
def test_gqa_groups_and_fp16(group, device):
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=2, n_head=4, n_mid=101, n_tail=9, group=group, kv_heads=1,
                                                  batch=1, dtype=torch.float16, device=device)
    assert_close(_run(q, k, v, exact), reference.reference_attention(q, k_ref, v_ref), q.dtype, f"seed={seed}")


@pytest.mark.parametrize("n_tail", [0, 2, 7, 20])
def test_causal_over_the_whole_sequence(n_tail, device):
    """Bottom-right causal alignment over head + middle + tail, for N_q up to 9 (decode) and 40 (prefill):
    with a short tail the middle needs its own causal mask, with a long one it is fully visible."""
    for n_q in (9, 40):
        n_mid = 90 if n_q <= 16 else 120
        q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=n_q, n_head=3, n_mid=n_mid, n_tail=n_tail, device=device)
        out = _run(q, k, v, exact, causal=True)
        expected = reference.reference_attention(q, k_ref, v_ref, causal=True)
        assert_close(out, expected, q.dtype, f"n_q={n_q} n_tail={n_tail} seed={seed}")


@pytest.mark.parametrize("kind", ["bool_padding", "bool_per_head", "additive"])
def test_masks_apply_at_true_positions(kind, device):
    """Mask column j is token j of the whole sequence: sinks, middle and window alike."""
    n_head, n_mid, n_tail, n_q = 4, 75, 11, 2
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=n_q, n_head=n_head, n_mid=n_mid, n_tail=n_tail, device=device)
    n = n_head + n_mid + n_tail
    gen = torch.Generator().manual_seed(seed)
    if kind == "bool_padding":
        mask = torch.ones(2, 1, 1, n, dtype=torch.bool)
        mask[1, :, :, :6] = False  # a left-padded row: its sinks and a few compressed tokens are hidden
        mask[0, :, :, -3:] = False
    elif kind == "bool_per_head":
        mask = torch.rand(2, q.shape[1], n_q, n, generator=gen) > 0.3
    else:
        mask = torch.randn(2, 1, n_q, n, generator=gen) * 2
        mask[:, :, :, 1] = torch.finfo(torch.float32).min
    mask = mask.to(device)
    out = _run(q, k, v, exact, mask=mask)
    assert_close(out, reference.reference_attention(q, k_ref, v_ref, mask=mask), q.dtype, f"{kind} seed={seed}")


def test_chunked_prefill_route(device):
    """N_q > 16: the middle is decompressed and the whole sequence goes through the prefill kernel."""
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=37, n_head=4, n_mid=150, n_tail=37, device=device)
    out = _run(q, k, v, exact, causal=True)
    assert_close(out, reference.reference_attention(q, k_ref, v_ref, causal=True), q.dtype, f"seed={seed}")


def test_only_exact_tokens_and_no_exact_tokens(device):
    """An empty middle (a prompt shorter than the sinks) and an empty exact set (sinks off)."""
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=1, n_head=3, n_mid=0, n_tail=0, center=False, device=device)
    assert_close(_run(q, k, v, exact), reference.reference_attention(q, k_ref, v_ref), q.dtype, f"seed={seed}")
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=2, n_head=0, n_mid=70, n_tail=0, device=device)
    assert_close(_run(q, k, v, exact), reference.reference_attention(q, k_ref, v_ref), q.dtype, f"seed={seed}")


def test_centring_is_consistent(device):
    """The compressed keys hold k - mu; the exact tokens' scores must drop q . mu too (a large mu
    would otherwise shift the sinks' weight by exp(q . mu))."""
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=1, n_head=4, n_mid=90, n_tail=4, device=device)
    shift = 3.0 * torch.randn(1, k.shape[1], 1, D, generator=torch.Generator().manual_seed(seed)).to(device)
    k = CompressedTensor(k.packed, k.norms, k.bits, k.head_dim, k.centroids, k.rotation, k.offset + shift)
    exact = ExactTokens(exact.keys + shift.to(exact.keys.dtype), exact.values, exact.n_head)
    k_ref = k_ref + shift.double()
    assert_close(_run(q, k, v, exact), reference.reference_attention(q, k_ref, v_ref), q.dtype, f"seed={seed}")


def test_custom_op_with_a_caller_workspace(device):
    """``tqgen::decode_attention_exact`` (the static cache's op) over a caller-owned workspace."""
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=1, n_head=4, n_mid=120, n_tail=0, device=device)
    n = 4 + 120
    mask = torch.ones(2, 1, 1, n, dtype=torch.bool, device=device)
    mask[0, ..., 100:] = False
    numel = exact_workspace_numel(2, q.shape[1], 2, 1, D, 120, 4, 4, device)
    workspace = torch.full((numel,), float("nan"), device=device)
    out = torch.ops.tqgen.decode_attention_exact(
        q, k.packed, k.norms, k.centroids.to(q.dtype), 4, v.packed, v.norms, v.centroids.to(q.dtype), 4,
        k.rotation, mask, workspace, D ** -0.5, False, exact.keys, exact.values, 4, k.offset)
    assert_close(out, reference.reference_attention(q, k_ref, v_ref, mask=mask), q.dtype, f"seed={seed}")
    with pytest.raises(ValueError, match="workspace"):
        torch.ops.tqgen.decode_attention_exact(
            q, k.packed, k.norms, k.centroids, 4, v.packed, v.norms, v.centroids, 4, k.rotation, mask,
            workspace[:10], D ** -0.5, False, exact.keys, exact.values, 4, k.offset)


def test_bad_exact_tokens_are_refused(device):
    q, k, v, exact, *_ = _problem(n_q=1, n_head=2, n_mid=10, n_tail=3, device=device)
    with pytest.raises(ValueError, match="n_head"):
        attention_with_exact(q, k, v, ExactTokens(exact.keys, exact.values, 6))
    with pytest.raises(TypeError, match="dtype"):
        attention_with_exact(q, k, v, ExactTokens(exact.keys.half(), exact.values, 2))
    with pytest.raises(ValueError, match=r"\[B, H_kv, E, D\]"):
        attention_with_exact(q, k, v, ExactTokens(exact.keys[:1], exact.values[:1], 2))
    with pytest.raises(TypeError, match="ExactTokens"):
        attention_with_exact(q, k, v, (exact.keys, exact.values))
    with pytest.raises(ValueError, match="attention_mask"):
        attention_with_exact(q, k, v, exact, attention_mask=torch.ones(1, 1, 1, 10, dtype=torch.bool))


@pytest.mark.parametrize("n_tail", [40, 100])
def test_a_window_split_over_programs(n_tail, device):
    """One KV head leaves SMs idle: the exact tokens' tiles go to several programs, one partial
    slot each (the interpreter counts 2 SMs: 2 slots of 1 or 2 tiles), merged like the splits."""
    from tqgen.ops.exact_tokens import LOG2E, ExactPartial

    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=1, n_head=4, n_mid=50, n_tail=n_tail, batch=1, kv_heads=1,
                                                  group=4, device=device)
    write = ExactPartial(q, exact, 50, None, None, LOG2E, None, False)
    if device == "cpu":
        assert (write.slots, write.tiles_per_slot) == (2, -(-(4 + n_tail) // 64))
    assert_close(_run(q, k, v, exact), reference.reference_attention(q, k_ref, v_ref), q.dtype, f"seed={seed}")


@pytest.mark.parametrize("group,n_q", [(4, 1), (8, 2), (1, 3)])
def test_fused_prologue_writes_what_the_two_kernels_write(group, n_q, device):
    """The Hopper path's single prologue launch (query planes + exact partial) equals the query-plane
    kernel and the exact partial's own launch, bit for bit (run here on the Triton kernels alone)."""
    from tqgen.gluon.query_planes import rotate_query_planes
    from tqgen.ops.decode_sm90 import _pi_planes
    from tqgen.ops.exact_tokens import LOG2E, ExactPartial

    q, k, v, exact, _, _, seed = _problem(n_q=n_q, n_head=4, n_mid=40, n_tail=9, group=group, dtype=torch.float16,
                                          device=device, head_dim=128)
    batch, kv_heads, m, capacity, slot = q.shape[0], k.shape[1], 8 if n_q * group <= 8 else 16, 3, 2
    write = ExactPartial(q, exact, 40, k.offset, v.rotation.float(), 0.125 * LOG2E, None, True)
    pi_planes = _pi_planes(k.rotation)
    results = []
    for fused in (False, True):
        rows = q.shape[0] * q.shape[1] * n_q
        parts = (poison_(torch.empty(rows * capacity * 128, device=device)),
                 poison_(torch.empty(rows * capacity, device=device)), poison_(torch.empty(rows * capacity, device=device)))
        planes = poison_(torch.empty(batch * kv_heads, 2, 64, m, dtype=q.dtype, device=device))
        if fused:
            write.launch_with_query_planes(parts, capacity, slot, pi_planes, planes, m)
        else:
            rotate_query_planes[(batch * kv_heads, 2)](q, *q.stride(), pi_planes, planes, kv_heads, n_q,
                                                       GROUP=group, M=m, D=128, num_warps=4)
            write(parts, capacity, slot)
        written = [p.view(rows, capacity, -1)[:, slot] for p in parts]
        assert not any(w.isnan().any() for w in written), f"seed={seed}"
        results.append((planes, *written))
    for a, b in zip(*results):
        assert torch.equal(a, b), f"seed={seed}"


# ------------------------------------------------------------------ GPU (pytest -m gpu)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs an H100/H200")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("padded", [False, True], ids=["no_mask", "key_padding"])
def test_hopper_partials_with_the_exact_slot(dtype, group, padded, monkeypatch):
    """K4V4 at head_dim 128 takes the Gluon kernel for the compressed middle (checked: its launcher
    runs), whose partials share the workspace with the exact slot written at capacity + 1."""
    import tqgen.ops.decode_sm90 as sm90

    launches = []
    real = sm90.launch_partials
    monkeypatch.setattr(sm90, "launch_partials", lambda *a, **k: launches.append(1) or real(*a, **k))
    n_mid = 1 + secrets.randbelow(3000)
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=1, n_head=4, n_mid=n_mid, n_tail=secrets.randbelow(70),
                                                  group=group, dtype=dtype, device="cuda", head_dim=128)
    mask = None
    if padded:
        mask = torch.ones(2, 1, 1, n_mid + exact.count, dtype=torch.bool, device="cuda")
        mask[1, ..., : 2 + n_mid // 3] = False
    out = _run(q, k, v, exact, mask=mask)
    assert launches, "the Gluon kernel was not taken"
    expected = reference.reference_attention(q, k_ref, v_ref, mask=mask)
    assert_close(out, expected, dtype, f"n_mid={n_mid} seed={seed}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bits", [(3, 3), (2, 4), (4, None)], ids=["k3v3", "k2v4", "k4"])
def test_triton_path_on_the_gpu_bf16(bits):
    """The Triton decode kernel's partials plus the exact slot on a GPU, bf16, long middle, 4 query rows."""
    q, k, v, exact, k_ref, v_ref, seed = _problem(n_q=4, n_head=4, n_mid=5000, n_tail=100, group=4,
                                                  k_bits=bits[0], v_bits=bits[1], dtype=torch.bfloat16,
                                                  device="cuda", head_dim=128)
    out = _run(q, k, v, exact, causal=True)
    expected = reference.reference_attention(q, k_ref, v_ref, causal=True)
    assert_close(out, expected, torch.bfloat16, f"seed={seed}")
