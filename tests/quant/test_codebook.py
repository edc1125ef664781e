import math

import numpy as np
import pytest
import torch

from tqgen.quant import Codebook, lloyd_max_codebook
from tqgen.quant.codebook import lloyd_step, solve_lloyd_max

# Max (1960): MSE per coordinate for a unit-variance Gaussian source.
MAX_GAUSSIAN_MSE = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}
ALL_BITS = [1, 2, 3, 4]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_gaussian_limit_matches_max(bits: int) -> None:
    # For large d the sphere marginal tends to N(0, 1/d): Max's values must come out.
    assert lloyd_max_codebook(16384, bits).mse() == pytest.approx(MAX_GAUSSIAN_MSE[bits], rel=2e-3)


def test_gaussian_limit_outer_centroid() -> None:
    d = 16384
    assert lloyd_max_codebook(d, 4).centroids[-1].item() == pytest.approx(2.7326 / math.sqrt(d), rel=1e-3)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_d128_close_to_and_below_gaussian(bits: int) -> None:
    # The exact marginal at d=128 has lighter tails than the Gaussian (excess kurtosis -6/(d+2)),
    # so its optimal MSE is 0.7% (1 bit) to 1.9% (4 bits) below Max's values, not equal to them.
    mse = lloyd_max_codebook(128, bits).mse()
    assert MAX_GAUSSIAN_MSE[bits] * 0.975 < mse < MAX_GAUSSIAN_MSE[bits]


def test_d128_outer_centroid() -> None:
    # Same tail effect: 2.6889 / sqrt(128) against 2.7326 / sqrt(128) in the Gaussian limit.
    outer = lloyd_max_codebook(128, 4).centroids[-1].item() * math.sqrt(128)
    assert outer == pytest.approx(2.7326, rel=0.02)
    assert outer == pytest.approx(2.68886, rel=1e-4)


def test_monte_carlo_mse_d128() -> None:
    generator = torch.Generator().manual_seed(1234)
    vectors = torch.randn(200_000, 128, generator=generator, dtype=torch.float64)
    coordinates = (vectors[:, :8] / vectors.norm(dim=-1, keepdim=True)).contiguous()
    for bits in ALL_BITS:
        codebook = lloyd_max_codebook(128, bits)
        nearest = torch.bucketize(coordinates, codebook.boundaries.double())
        error = (coordinates - codebook.centroids.double()[nearest]).pow(2).mean().item() * 128
        assert error == pytest.approx(codebook.mse(), rel=0.02)


@pytest.mark.parametrize("head_dim", [4, 32, 64, 128, 256])
@pytest.mark.parametrize("bits", ALL_BITS)
def test_shape_order_symmetry_midpoints(head_dim: int, bits: int) -> None:
    codebook = lloyd_max_codebook(head_dim, bits)
    c, b = codebook.centroids, codebook.boundaries
    assert c.dtype == b.dtype == torch.float32
    assert c.shape == (2**bits,) and b.shape == (2**bits - 1,)
    assert torch.all(c[1:] > c[:-1])
    assert torch.allclose(c, -c.flip(0), atol=1e-7, rtol=0)
    assert torch.allclose(b, (c[1:] + c[:-1]) / 2, atol=1e-7, rtol=0)
    assert torch.all(c.abs() < 1)


@pytest.mark.parametrize("head_dim", [32, 128, 256])
@pytest.mark.parametrize("bits", ALL_BITS)
def test_converged(head_dim: int, bits: int) -> None:
    centroids = solve_lloyd_max(head_dim, bits)
    assert np.max(np.abs(lloyd_step(head_dim, centroids) - centroids)) < 1e-9


def test_cached_and_fast() -> None:
    import time

    assert lloyd_max_codebook(128, 4) is lloyd_max_codebook(128, 4)
    start = time.perf_counter()
    solve_lloyd_max(192, 4)
    assert time.perf_counter() - start < 0.5


def test_to_device_cached() -> None:
    codebook = lloyd_max_codebook(64, 3)
    assert codebook.to("cpu") is codebook
    meta = codebook.to("meta")
    assert meta.centroids.device.type == "meta" and meta is codebook.to("meta")
    assert (meta.head_dim, meta.bits) == (64, 3)


def test_mse_of_custom_codebook_is_worse() -> None:
    best = lloyd_max_codebook(128, 2)
    scaled = Codebook(128, 2, best.centroids * 1.1, best.boundaries * 1.1)
    assert scaled.mse() > best.mse()


@pytest.mark.parametrize("head_dim, bits, name", [(3, 2, "head_dim"), (2, 2, "head_dim"),
                                                   (128, 0, "bits"), (128, 5, "bits")])
def test_rejects_bad_arguments(head_dim: int, bits: int, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        lloyd_max_codebook(head_dim, bits)
