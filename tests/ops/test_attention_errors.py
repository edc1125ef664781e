"""Bad input to ``tqgen.attention.attention`` fails early with a message naming the argument."""

from __future__ import annotations

import re

import pytest
import torch

from attention_inputs import compress_operand
from tqgen.attention import attention
from tqgen.compressed import CompressedTensor
from tqgen.quant import rotation_matrix


def _inputs(device: str, dtype=torch.float16, b=1, hq=4, hkv=2, nq=3, nkv=20, d=64):
    return (
        torch.randn(b, hq, nq, d, device=device, dtype=dtype),
        torch.randn(b, hkv, nkv, d, device=device, dtype=dtype),
        torch.randn(b, hkv, nkv, d, device=device, dtype=dtype),
    )


def _raises(exc, pattern: str, *args, **kwargs) -> None:
    with pytest.raises(exc, match=re.escape(pattern) if not pattern.startswith("re:") else pattern[3:]):
        attention(*args, **kwargs)


def test_rank_and_shape(device: str) -> None:
    q, k, v = _inputs(device)
    _raises(ValueError, "q must have 4 dimensions", q[0], k, v)
    _raises(ValueError, "k must have 4 dimensions", q, k[0], v)
    _raises(ValueError, "k must have shape", q, k[..., :32], v)
    _raises(ValueError, "v must match k's", q, k, v[:, :, :5])
    _raises(ValueError, "k must have shape", q, torch.cat([k, k]), v)  # batch differs


def test_head_dim(device: str) -> None:
    for d in (31, 16, 258):
        q, k, v = _inputs(device, d=d)
        _raises(ValueError, "head_dim must be even and in [32, 256]", q, k, v)


def test_heads_not_multiple(device: str) -> None:
    q, k, v = _inputs(device, hq=6, hkv=4)
    _raises(ValueError, "q heads (6) must be a multiple of k/v heads (4)", q, k, v)
    q, k, v = _inputs(device, hq=34, hkv=2)
    _raises(ValueError, "GQA groups of at most 16", q, k, v)


def test_dtypes(device: str) -> None:
    q, k, v = _inputs(device)
    _raises(TypeError, "q must have dtype", q.to(torch.int32), k, v)
    _raises(TypeError, "q must have dtype", q.double(), k.double(), v.double())
    _raises(TypeError, "k must have q's dtype", q, k.float(), v)
    _raises(TypeError, "v must have q's dtype", q, k, v.float())


def test_compressed_operands(device: str) -> None:
    q, k, v = _inputs(device)
    kc, _ = compress_operand(k, 4)
    _raises(TypeError, "k.packed must have dtype uint8",
            q, CompressedTensor(kc.packed.to(torch.int16), kc.norms, 4, 64, kc.centroids, kc.rotation), v)
    _raises(ValueError, "bits and packed width disagree",
            q, CompressedTensor(kc.packed, kc.norms, 3, 64, kc.centroids, kc.rotation), v)
    _raises(ValueError, "k.bits: bits must be one of",
            q, CompressedTensor(kc.packed, kc.norms, 5, 64, kc.centroids, kc.rotation), v)
    _raises(ValueError, "k.head_dim is 32",
            q, CompressedTensor(kc.packed, kc.norms, 4, 32, kc.centroids, kc.rotation), v)
    _raises(TypeError, "k.norms must have dtype float32",
            q, CompressedTensor(kc.packed, kc.norms.half(), 4, 64, kc.centroids, kc.rotation), v)
    _raises(ValueError, "k.norms must have shape",
            q, CompressedTensor(kc.packed, kc.norms[:, :, :3], 4, 64, kc.centroids, kc.rotation), v)
    _raises(ValueError, "k.centroids must have 16 entries",
            q, CompressedTensor(kc.packed, kc.norms, 4, 64, kc.centroids[:8], kc.rotation), v)
    _raises(ValueError, "k.rotation must have shape",
            q, CompressedTensor(kc.packed, kc.norms, 4, 64, kc.centroids, kc.rotation[:32]), v)


def test_rotation_must_be_shared(device: str) -> None:
    q, k, v = _inputs(device)
    kc, _ = compress_operand(k, 4)
    vc, _ = compress_operand(v, 3)
    attention(q, kc, vc)  # same Pi: fine
    other = CompressedTensor(vc.packed, vc.norms, 3, 64, vc.centroids, rotation_matrix(64, seed=7, device=device))
    _raises(ValueError, "k.rotation and v.rotation differ", q, kc, other)


def test_mask(device: str) -> None:
    q, k, v = _inputs(device)
    _raises(ValueError, "attention_mask of shape (3, 21) does not broadcast to [B, H_q, N_q, N_kv] = (1, 4, 3, 20)",
            q, k, v, attention_mask=torch.zeros(3, 21, device=device))
    _raises(TypeError, "attention_mask must have dtype", q, k, v, attention_mask=torch.zeros(3, 20, dtype=torch.int64, device=device))
    _raises(ValueError, "attention_mask must have 1 or 2 or 3 or 4 dimensions",
            q, k, v, attention_mask=torch.zeros(1, 1, 1, 3, 20, device=device))


def test_is_causal_and_scale(device: str) -> None:
    q, k, v = _inputs(device)
    _raises(TypeError, "is_causal must be a bool", q, k, v, is_causal=torch.ones(1))
    _raises(ValueError, "sm_scale must be finite", q, k, v, sm_scale=float("inf"))


def test_out(device: str) -> None:
    q, k, v = _inputs(device)
    _raises(ValueError, "out must have shape", q, k, v, out=torch.empty(1, 4, 3, 32, device=device, dtype=q.dtype))
    _raises(TypeError, "out must have q's dtype", q, k, v, out=torch.empty_like(q, dtype=torch.float32))
    _raises(ValueError, "out must have a unit stride", q, k, v, out=torch.empty(1, 4, 3, 128, device=device, dtype=q.dtype)[..., ::2])


def test_schedule(device: str) -> None:
    q, k, v = _inputs(device, nq=17)
    _raises(ValueError, "the decode schedule takes at most 16 query positions", q, k, v, schedule="decode")
    _raises(ValueError, "schedule must be", q, k, v, schedule="fast")


def test_devices_and_interpreter(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _inputs("cpu")
    if device == "cuda":
        _raises(ValueError, "tensors must be on one device", q.cuda(), k, v)
    else:
        _raises(ValueError, "re:tensors must be on one device", q, k, v.to("meta"))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        _raises(ValueError, "TRITON_INTERPRET=1", q, k, v)
