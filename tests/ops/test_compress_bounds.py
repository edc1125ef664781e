"""What compress guarantees: its codes are the exact (float64) TurboQuant codes except for
coordinates within rounding of a cell boundary, which may take the neighbouring code; norms are
right for every finite vector whose norm fits fp32, however large or small its entries."""

from __future__ import annotations

import pytest
import torch

from tqgen import TurboQuant
from tqgen.quant import lloyd_max_codebook, rotation_matrix, unpack
from tqgen.testing import NORM_RTOL

# README "Formats": a coordinate's code may differ from the exact one only if the exact rotated
# unit coordinate lies within this distance of a cell boundary.
BOUNDARY_ROUNDING = 1e-5


def _exact_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, norms, distance of each rotated coordinate to its nearest boundary), all in float64."""
    head_dim = x.shape[-1]
    x64 = x.cpu().double()
    norms = torch.linalg.vector_norm(x64, dim=-1)
    y = (x64 / norms.clamp_min(1e-300).unsqueeze(-1)) @ rotation_matrix(head_dim).double().T
    boundaries = lloyd_max_codebook(head_dim, bits).boundaries.double()
    codes = torch.searchsorted(boundaries, y.contiguous())
    distance = (y.unsqueeze(-1) - boundaries).abs().amin(-1)
    return codes, norms, distance


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_codes_equal_the_exact_ones_except_within_rounding_of_a_boundary(bits, device):
    head_dim = 128
    x = torch.randn(1, 4, 512, head_dim, device=device)
    ct = TurboQuant(head_dim, bits).compress(x)
    codes = unpack(ct.packed.cpu(), bits, head_dim).long()
    exact, norms, distance = _exact_codes(x, bits)
    differ = codes != exact
    assert not (differ & (distance >= BOUNDARY_ROUNDING)).any(), (
        f"{int((differ & (distance >= BOUNDARY_ROUNDING)).sum())} codes differ away from a boundary"
    )
    assert ((codes - exact).abs() <= 1).all(), "a differing code must be a neighbouring cell's"
    assert differ.float().mean().item() < 1e-3  # near-ties are rare
    torch.testing.assert_close(ct.norms.cpu().double(), norms, rtol=NORM_RTOL, atol=0)


# bf16 only on the GPU: the interpreter flushes bf16 subnormals (an entry of 2^-120 * randn can be one)
@pytest.mark.parametrize("dtype", (torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)), ids=str)
@pytest.mark.parametrize("exponent", (70, 120, -90, -120, -135))
def test_norms_of_extreme_vectors(dtype, exponent, device):
    """Entries around 2^exponent (1e21 to 1e36, 1e-27 to 2e-41, subnormal included): x * x would
    overflow or underflow fp32, the norm itself does not.  Power-of-two scaling changes no code."""
    head_dim = 64
    base = torch.randn(1, 2, 9, head_dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    x = (base.double() * 2.0**exponent).to(dtype)
    assert torch.isfinite(x).all() and (x != 0).any()
    tq = TurboQuant(head_dim, 4)
    ct = tq.compress(x.to(device))
    expected = torch.linalg.vector_norm(x.double(), dim=-1)
    assert torch.isfinite(ct.norms).all() and (ct.norms > 0).all()
    # within rounding of the fp32 result (a subnormal norm has fewer bits: one ulp is 2^-149)
    torch.testing.assert_close(ct.norms.cpu().double(), expected, rtol=NORM_RTOL, atol=2.0**-149)
    codes = unpack(ct.packed.cpu(), 4, head_dim).long()
    exact, _, distance = _exact_codes(x, 4)
    assert not ((codes != exact) & (distance >= BOUNDARY_ROUNDING)).any()
    if exponent >= -126 and dtype == torch.float32:  # normal entries: the unscaled vector's codes, exactly
        assert torch.equal(ct.packed.cpu(), tq.compress(base.to(device)).packed.cpu())


def test_zero_and_mixed_scale_rows(device):
    """A zero row keeps norm 0; a row with one huge entry among tiny ones gets the huge one's norm."""
    x = torch.zeros(1, 1, 3, 64)
    x[0, 0, 1, 0] = 3.0e30
    x[0, 0, 1, 1:] = 1.0e-30
    x[0, 0, 2] = torch.randn(64) * 1e-20
    ct = TurboQuant(64, 4).compress(x.to(device))
    expected = torch.linalg.vector_norm(x.double(), dim=-1)
    assert ct.norms[0, 0, 0].item() == 0.0
    torch.testing.assert_close(ct.norms.cpu().double(), expected, rtol=NORM_RTOL, atol=0)
