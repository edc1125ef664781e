"""tqgen's custom operators: torch.library.opcheck, agreement with the dispatcher, and errors."""

import pytest
import torch
from torch.library import opcheck

import tqgen.ops.library as library
from tqgen.attention import attention
from tqgen.turboquant import TurboQuant

B, HQ, HKV, D, N = 1, 4, 2, 64, 40


def _inputs(device: str, n_q: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(B, HKV, N, D, generator=gen).to(device)
    v = torch.randn(B, HKV, N, D, generator=gen).to(device)
    q = torch.randn(B, HQ, n_q, D, generator=gen).to(device)
    tq = TurboQuant(D, 4)
    return q, k, v, tq, tq.compress(k), tq.compress(v)


def _workspace(device: str, n_q: int, k_bits: int, v_bits: int) -> torch.Tensor:
    return torch.zeros(library.decode_workspace_numel(B, HQ, HKV, n_q, D, N, k_bits, v_bits, device), device=device)


def test_decode_op(device):
    """opcheck (schema incl. the workspace mutation, fake tensor, aot dispatch) and = attention()."""
    q, _, _, _, kc, vc = _inputs(device)
    mask = torch.rand(B, 1, 1, N, generator=torch.Generator().manual_seed(1)).to(device) > 0.3
    ws = _workspace(device, 1, 4, 4)
    args = (q, kc.packed, kc.norms, kc.centroids, 4, vc.packed, vc.norms, vc.centroids, 4, kc.rotation, mask, ws,
            D**-0.5, False)
    opcheck(torch.ops.tqgen.decode_attention.default, args)
    out = torch.ops.tqgen.decode_attention(*args)
    torch.testing.assert_close(out, attention(q, kc, vc, attention_mask=mask), rtol=0, atol=0)


def test_prefill_op_plain_k(device):
    """Prefill schedule, plain K and compressed V, causal: opcheck and = attention()."""
    q, k, _, _, kc, vc = _inputs(device, n_q=20)
    args = (q, k, None, None, 0, vc.packed, vc.norms, vc.centroids, 4, kc.rotation, None, D**-0.5, True)
    opcheck(torch.ops.tqgen.prefill_attention.default, args)
    out = torch.ops.tqgen.prefill_attention(*args)
    torch.testing.assert_close(out, attention(q, k, vc, is_causal=True), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [3, 4])
def test_compress_op(bits, device):
    """opcheck (incl. the fake impl's packed width) and the same codes as TurboQuant.compress."""
    _, k, _, _, _, _ = _inputs(device)
    tq = TurboQuant(D, bits)
    args = (k, tq.rotation(device), tq.boundaries(device), bits)
    opcheck(torch.ops.tqgen.compress.default, args)
    packed, norms = torch.ops.tqgen.compress(*args)
    ref = tq.compress(k)
    assert torch.equal(packed, ref.packed) and torch.equal(norms, ref.norms)


def test_workspace_too_small_is_refused(device):
    q, _, _, _, kc, vc = _inputs(device)
    small = torch.zeros(8, device=device)
    with pytest.raises(ValueError, match="workspace must be a flat fp32 tensor of at least"):
        torch.ops.tqgen.decode_attention(q, kc.packed, kc.norms, kc.centroids, 4, vc.packed, vc.norms, vc.centroids,
                                         4, kc.rotation, None, small, D**-0.5, False)


def test_operand_kinds_are_checked(device):
    q, k, v, _, kc, _ = _inputs(device)
    ws = _workspace(device, 1, 4, 0)
    with pytest.raises(ValueError, match="k_norms, k_centroids and rotation"):
        torch.ops.tqgen.decode_attention(q, kc.packed, None, None, 4, v, None, None, 0, None, None, ws, 0.1, False)
    with pytest.raises(ValueError, match="v_bits must be 0"):
        torch.ops.tqgen.decode_attention(q, k, None, None, 0, v, None, None, 5, None, None, ws, 0.1, False)
