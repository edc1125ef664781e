"""fused_qk_scores against float64 q_rot . decompress(rotated=True)^T * scale."""

from __future__ import annotations

import pytest
import torch

from tqgen.quant import lloyd_max_codebook, reference
from tqgen.scores import fused_qk_scores
from tqgen.testing import assert_close, poison_

KV_HEADS = 2


def _inputs(batch, group, n_q, n_kv, head_dim, bits, device, dtype=torch.float16):
    q = torch.randn(batch, KV_HEADS * group, n_q, head_dim, device=device).to(dtype)
    packed, norms = reference.compress(torch.randn(batch, KV_HEADS, n_kv, head_dim, device=device), bits)
    centroids = lloyd_max_codebook(head_dim, bits).centroids.to(device)
    return q, packed, norms, centroids


def _scores(q, packed, norms, centroids, scale):
    out = poison_(torch.empty((*q.shape[:3], packed.shape[2]), device=q.device))
    return fused_qk_scores(
        q, packed, norms, centroids, scale, n_q_heads=q.shape[1], n_kv_heads=packed.shape[1], out=out
    )


def _expected(q, packed, norms, bits, scale):
    keys = reference.decompress(packed.cpu(), norms.cpu().double(), bits, q.shape[-1], rotated=True, dtype=torch.float64)
    keys = keys.repeat_interleave(q.shape[1] // packed.shape[1], dim=1)
    return (q.cpu().double() @ keys.transpose(-1, -2)) * scale


@pytest.mark.parametrize("group", (1, 2, 3, 4, 8))
@pytest.mark.parametrize("n_q", (1, 5))
@pytest.mark.parametrize("n_kv", (1, 37, 130))
def test_gqa_groups_and_lengths(device, group, n_q, n_kv):
    q, packed, norms, centroids = _inputs(2, group, n_q, n_kv, 64, 4, device)
    out = _scores(q, packed, norms, centroids, 0.125)
    assert out.dtype == torch.float32
    assert_close(out, _expected(q, packed, norms, 4, 0.125), torch.float16)


@pytest.mark.parametrize("head_dim", (32, 80, 96, 128, 256))
@pytest.mark.parametrize("bits", (2, 3, 4))
def test_code_widths_and_head_dims(device, head_dim, bits):
    q, packed, norms, centroids = _inputs(1, 4, 3, 37, head_dim, bits, device)
    scale = head_dim**-0.5
    assert_close(_scores(q, packed, norms, centroids, scale), _expected(q, packed, norms, bits, scale), torch.float16)


def test_fp32_strided_query_and_trailing_one_norms(device):
    """q as a [B, N, H, D] tensor viewed as [B, H, N, D]; norms [B, H, N, 1]; no out given."""
    q = torch.randn(2, 5, 4, 64, device=device).transpose(1, 2)
    packed, norms = reference.compress(torch.randn(2, 2, 37, 64, device=device), 3)
    centroids = lloyd_max_codebook(64, 3).centroids.to(device)
    out = fused_qk_scores(q, packed, norms.unsqueeze(-1), centroids, 0.125, n_q_heads=4, n_kv_heads=2)
    assert_close(out, _expected(q, packed, norms, 3, 0.125), torch.float32)


def test_zero_norm_keys_score_zero(device):
    q, packed, norms, centroids = _inputs(1, 2, 2, 5, 64, 4, device)
    norms[:, :, 3] = 0
    out = _scores(q, packed, norms, centroids, 0.125)
    assert (out[..., 3] == 0).all()


def test_empty_kv(device):
    q, packed, norms, centroids = _inputs(1, 2, 2, 0, 64, 4, device)
    out = fused_qk_scores(q, packed, norms, centroids, 0.125, n_q_heads=4, n_kv_heads=2)
    assert out.shape == (1, 4, 2, 0)


# ------------------------------------------------------------------ errors
def _args(device):
    q, packed, norms, centroids = _inputs(1, 2, 3, 5, 64, 4, device)
    return dict(q_rotated=q, packed_indices=packed, norms=norms, centroids=centroids, scale=0.125,
                n_q_heads=4, n_kv_heads=2)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(centroids=torch.zeros(10)), "centroids must hold 4, 8 or 16 values"),
        (dict(centroids=torch.zeros(8)), "packed_indices has 32 bytes per key but 3-bit codes"),
        (dict(n_q_heads=6), r"q_rotated has 4 heads \(dim 1\) but n_q_heads=6"),
        (dict(n_kv_heads=3), r"n_q_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
        (dict(n_kv_heads=1), r"packed_indices must have shape"),
        (dict(n_kv_heads=0), "n_kv_heads must be a positive int"),
        (dict(q_rotated=torch.randn(1, 34, 3, 64), n_q_heads=34), "GQA groups of at most 16"),
        (dict(q_rotated=torch.randn(1, 4, 3, 63)), "head_dim must be even"),
        (dict(q_rotated=torch.randn(4, 3, 64)), "q_rotated must have 4 dimensions"),
        (dict(q_rotated=torch.randn(1, 4, 3, 64, dtype=torch.float64)), "q_rotated must have dtype"),
        (dict(packed_indices=torch.zeros(1, 2, 5, 32, dtype=torch.int8)), "packed_indices must have dtype uint8"),
        (dict(norms=torch.zeros(1, 2, 6)), "norms must have shape"),
        (dict(scale=float("nan")), "scale must be finite"),
        (dict(scale=float("inf")), "scale must be finite"),
        (dict(scale="0.1x"), "scale must be a real number"),
    ],
)
def test_bad_arguments(device, change, match):
    args = _args(device)
    args.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises((ValueError, TypeError), match=match):
        fused_qk_scores(**args)


def test_bad_out():
    args = _args("cpu")
    with pytest.raises(ValueError, match="out must have shape"):
        fused_qk_scores(**args, out=torch.empty(1, 4, 3, 6))


def test_device_mismatch():
    args = _args("cpu")
    args["centroids"] = args["centroids"].to("meta")
    with pytest.raises(ValueError, match="tensors must be on one device"):
        fused_qk_scores(**args)


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fused_qk_scores(**_args("cpu"))


# --------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("group", (1, 4, 8))
def test_bf16_long_kv(device, group):
    q, packed, norms, centroids = _inputs(1, group, 4, 32768, 128, 4, device, dtype=torch.bfloat16)
    out = _scores(q, packed, norms, centroids, 128**-0.5)
    assert_close(out, _expected(q, packed, norms, 4, 128**-0.5), torch.bfloat16)
