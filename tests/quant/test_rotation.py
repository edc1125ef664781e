import pytest
import torch

from tqgen.quant import rotation_matrix


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256])
def test_orthogonal(head_dim: int) -> None:
    pi = rotation_matrix(head_dim)
    assert pi.dtype == torch.float32 and pi.shape == (head_dim, head_dim)
    identity = torch.eye(head_dim)
    assert (pi @ pi.T - identity).abs().max() < 1e-5
    assert (pi.T @ pi - identity).abs().max() < 1e-5


def test_matches_turboquant_vllm_construction() -> None:
    generator = torch.Generator().manual_seed(42)
    gaussian = torch.randn(64, 64, generator=generator, dtype=torch.float32)
    q, r = torch.linalg.qr(gaussian)
    expected = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    assert torch.equal(rotation_matrix(64), expected)


def test_pinned_values() -> None:
    # rotation_matrix(128, seed=42)[0, :3] == [0.17488539, 0.12072659, 0.08546747] (torch 2.x CPU)
    expected = torch.tensor([0.17488539218902588, 0.12072659283876419, 0.08546747267246246])
    assert torch.allclose(rotation_matrix(128)[0, :3], expected, atol=1e-6, rtol=0)


def test_deterministic_and_seeded() -> None:
    assert rotation_matrix(64, seed=7) is rotation_matrix(64, seed=7)  # cached
    assert not torch.allclose(rotation_matrix(64, seed=7), rotation_matrix(64, seed=8))
    assert torch.equal(rotation_matrix(64, device="cpu"), rotation_matrix(64))


def test_round_trip_convention() -> None:
    x = torch.randn(10, 96, dtype=torch.float64)
    pi = rotation_matrix(96).double()
    y = x @ pi.T
    # Pi is fp32, so it is orthogonal to ~1e-7, not to float64 precision.
    assert torch.allclose(y @ pi, x, atol=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("head_dim", [0, 3, 127, 8192, 64.0, True])
def test_rejects_bad_head_dim(head_dim) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        rotation_matrix(head_dim)
