"""The Hopper decode prologue (a plain Triton kernel): rotated query planes in the K unpack order."""

from __future__ import annotations

import pytest
import torch

from tqgen.gluon.query_planes import key_byte, rotate_query_planes
from tqgen.ops.decode_sm90 import _pi_planes
from tqgen.quant import rotation_matrix


def test_key_byte_is_a_permutation() -> None:
    assert sorted(key_byte(kk) for kk in range(64)) == list(range(64))


@pytest.mark.parametrize("batch,kv_heads,group,n_q,m", [(2, 3, 4, 2, 8), (1, 2, 16, 1, 16), (1, 1, 1, 1, 8)])
def test_planes_match_float64(batch: int, kv_heads: int, group: int, n_q: int, m: int, device: str) -> None:
    pi = rotation_matrix(128, device=device)
    q = torch.randn(batch, kv_heads * group, n_q, 128, device=device)
    out = torch.full((batch * kv_heads, 2, 64, m), float("nan"), device=device)
    rotate_query_planes[(batch * kv_heads, 2)](q, *q.stride(), _pi_planes(pi), out, kv_heads, n_q,
                                               GROUP=group, M=m, D=128)
    y = q.double() @ pi.double().T  # rotated queries, [B, H_q, N_q, D]
    j = torch.tensor([key_byte(kk) for kk in range(64)], device=device)
    expected = torch.zeros(batch * kv_heads, 2, 64, m, dtype=torch.float64, device=device)
    for r in range(min(m, n_q * group)):
        rows = y[:, torch.arange(kv_heads, device=device) * group + r % group, r // group]  # [B, H_kv, D]
        for plane in range(2):
            expected[:, plane, :, r] = rows[..., 2 * j + plane].reshape(batch * kv_heads, 64)
    assert torch.allclose(out.double(), expected, atol=1e-4), (out.double() - expected).abs().max()
