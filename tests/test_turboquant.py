"""TurboQuant (one quantisation mode) and the seed-named tq4_compress / tq4_decompress."""

from __future__ import annotations

import pytest
import torch

from tqgen.compressed import CompressedTensor
from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix, unpack
from tqgen.testing import NORM_RTOL, assert_close, poison_
from tqgen.turboquant import TurboQuant, tq4_compress, tq4_decompress

NEAR_TIE = 1e-5


def _assert_codes(packed: torch.Tensor, x: torch.Tensor, bits: int) -> None:
    """Codes equal the reference's except on float64 near-ties with a boundary."""
    head_dim = x.shape[-1]
    ref_packed, _ = reference.compress(x.float().cpu(), bits)
    x64 = x.cpu().double()
    y = (x64 / torch.linalg.vector_norm(x64, dim=-1, keepdim=True).clamp_min(1e-300)) @ rotation_matrix(head_dim).double().T
    boundaries = lloyd_max_codebook(head_dim, bits).boundaries.double()
    above = torch.searchsorted(boundaries, y.contiguous()).clamp(1, boundaries.numel() - 1)
    near_tie = torch.minimum((y - boundaries[above - 1]).abs(), (y - boundaries[above]).abs()) < NEAR_TIE
    differ = unpack(packed.cpu(), bits, head_dim) != unpack(ref_packed, bits, head_dim)
    assert not (differ & ~near_tie).any()


# ------------------------------------------------------------------ the mode
def test_mode_data_cached_per_device(device):
    tq = TurboQuant(64, 3)
    assert (tq.head_dim, tq.bits, tq.seed) == (64, 3, 42)
    assert tq.rotation(device) is tq.rotation(device)
    assert tq.centroids(device) is tq.centroids(device)
    assert tq.boundaries(device).shape == (7,) and tq.centroids(device).shape == (8,)
    torch.testing.assert_close(tq.rotation(device).cpu(), rotation_matrix(64))
    assert TurboQuant(64, 3) == tq and TurboQuant(64, 3, seed=7) != tq


@pytest.mark.parametrize("head_dim, bits, seed", [(33, 4, 42), (30, 4, 42), (258, 4, 42), (64, 5, 42), (64, 4, "a")])
def test_bad_mode(head_dim, bits, seed):
    with pytest.raises(ValueError):
        TurboQuant(head_dim, bits, seed)


def test_empty(device):
    ct = TurboQuant(80, 3).empty(2, 4, 10, device)
    assert ct.packed.shape == (2, 4, 10, 30) and ct.packed.dtype == torch.uint8
    assert ct.norms.shape == (2, 4, 10) and ct.norms.dtype == torch.float32
    assert ct.shape == (2, 4, 10, 80) and (ct.bits, ct.head_dim) == (3, 80)
    assert (ct.norms == 0).all()


# ------------------------------------------------------------ compress paths
@pytest.mark.parametrize("bits", (2, 3, 4))
def test_compress_fresh(device, bits):
    tq = TurboQuant(96, bits)
    x = torch.randn(2, 3, 11, 96, device=device, dtype=torch.float16)
    ct = tq.compress(x)
    assert ct.shape == (2, 3, 11, 96)
    _assert_codes(ct.packed, x, bits)


def test_append_chunks_into_preallocated_cache(device):
    """Prefill then decode steps: each append is one launch into the same buffer."""
    tq = TurboQuant(64, 4)
    cache = tq.empty(2, 2, 32, device)
    poison_(cache.packed)
    poison_(cache.norms)
    x = torch.randn(2, 2, 20, 64, device=device)
    start = 0
    for n in (13, 1, 1, 5):
        written = tq.compress(x[:, :, start:start + n], out=cache, start=start)
        assert written.shape == (2, 2, n, 64)
        assert written.packed.data_ptr() == cache.packed[:, :, start].data_ptr()  # a view, not a copy
        start += n
    _assert_codes(cache.packed[:, :, :20], x, 4)
    torch.testing.assert_close(cache.norms[:, :, :20], torch.linalg.vector_norm(x, dim=-1), rtol=NORM_RTOL, atol=0)
    assert (cache.packed[:, :, 20:] == 255).all() and cache.norms[:, :, 20:].isnan().all()


def test_compress_errors(device):
    tq = TurboQuant(64, 4)
    cache = tq.empty(1, 2, 8, device)
    x = torch.randn(1, 2, 3, 64, device=device)
    with pytest.raises(ValueError, match="exceeds the buffer capacity 8"):
        tq.compress(x, out=cache, start=6)
    with pytest.raises(ValueError, match="start=2 needs an out buffer"):
        tq.compress(x, start=2)
    with pytest.raises(ValueError, match="x has head_dim 32"):
        tq.compress(torch.randn(1, 2, 3, 32, device=device))
    with pytest.raises(ValueError, match="out holds 3-bit codes"):
        tq.compress(x, out=TurboQuant(64, 3).empty(1, 2, 8, device))
    with pytest.raises(TypeError, match="out must be a CompressedTensor"):
        tq.compress(x, out=cache.packed)


# ---------------------------------------------------------- decompress paths
@pytest.mark.parametrize("bits", (2, 3, 4))
@pytest.mark.parametrize("rotated", (False, True), ids=("original", "rotated"))
def test_decompress_matches_reference(device, bits, rotated):
    tq = TurboQuant(64, bits)
    ct = tq.compress(torch.randn(2, 2, 9, 64, device=device))
    out = tq.decompress(ct, rotated=rotated, dtype=torch.float32)
    expected = reference.decompress(ct.packed.cpu(), ct.norms.cpu().double(), bits, 64, rotated=rotated, dtype=torch.float64)
    assert_close(out, expected, torch.float32)


def test_decompress_into_out_uses_its_dtype(device):
    tq = TurboQuant(64, 4)
    ct = tq.compress(torch.randn(1, 2, 5, 64, device=device))
    out = poison_(torch.empty(1, 2, 5, 64, device=device))
    assert tq.decompress(ct, out=out) is out
    assert_close(out, tq.decompress(ct, dtype=torch.float32), torch.float32)
    with pytest.raises(TypeError, match="dtype must be"):
        tq.decompress(ct, dtype=torch.int8)


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_round_trip_error_is_the_codebook_mse(device, bits):
    """E ||x - x_hat||^2 / ||x||^2 equals the codebook's expected error (Gaussian data, rotated or not)."""
    tq = TurboQuant(128, bits)
    x = torch.randn(2, 2, 256, 128, device=device) * 3.0
    x_hat = tq.decompress(tq.compress(x), dtype=torch.float32)
    measured = ((x - x_hat).square().sum(-1) / x.square().sum(-1)).mean().item()
    assert measured == pytest.approx(tq.codebook.mse(), rel=0.05)


def test_zero_vectors_round_trip_to_zero(device):
    tq = TurboQuant(64, 3)
    x = torch.zeros(1, 1, 3, 64, device=device)
    x[0, 0, 1] = 1.0
    ct = tq.compress(x)
    assert ct.norms[0, 0, 0] == 0 and not ct.norms.isnan().any()
    out = tq.decompress(ct, dtype=torch.float32)
    assert (out[0, 0, 0] == 0).all() and (out[0, 0, 2] == 0).all()


# ------------------------------------------------------- seed-named wrappers
def test_tq4_compress_and_decompress(device):
    x = torch.randn(2, 2, 7, 128, device=device, dtype=torch.float16)
    packed, norms = tq4_compress(x)
    assert packed.shape == (2, 2, 7, 64) and norms.shape == (2, 2, 7)
    _assert_codes(packed, x, 4)
    out = tq4_decompress(packed, norms.unsqueeze(-1))
    assert out.dtype == torch.float16
    expected = reference.decompress(packed.cpu(), norms.cpu().double(), 4, 128, dtype=torch.float64)
    assert_close(out, expected, torch.float16)
    rotated = tq4_decompress(packed, norms, rotated=True, dtype=torch.float32)
    expected = reference.decompress(packed.cpu(), norms.cpu().double(), 4, 128, rotated=True, dtype=torch.float64)
    assert_close(rotated, expected, torch.float32)


def test_tq4_compress_into_buffers(device):
    x = torch.randn(1, 2, 4, 64, device=device)
    packed_out = torch.full((1, 2, 10, 32), 7, dtype=torch.uint8, device=device)
    norms_out = torch.full((1, 2, 10, 1), float("nan"), device=device)
    packed, norms = tq4_compress(x, packed_out=packed_out, norms_out=norms_out, start=3)
    assert packed.shape == (1, 2, 4, 32) and norms.shape == (1, 2, 4, 1)
    _assert_codes(packed_out[:, :, 3:7], x, 4)
    assert (packed_out[:, :, :3] == 7).all() and (packed_out[:, :, 7:] == 7).all()
    assert norms_out[:, :, :3].isnan().all() and not norms_out[:, :, 3:7].isnan().any()


def test_tq4_custom_codebook_and_rotation(device):
    """Explicit rotation/boundaries/centroids are the ones used (here: identity rotation)."""
    eye = torch.eye(64, device=device)
    codebook = lloyd_max_codebook(64, 4)
    x = torch.randn(1, 1, 5, 64, device=device)
    packed, norms = tq4_compress(x, eye, codebook.boundaries.to(device))
    ref_packed, _ = reference.compress(x.cpu(), 4, rotation=torch.eye(64))
    assert (unpack(packed.cpu(), 4, 64) != unpack(ref_packed, 4, 64)).sum() <= 2  # near-ties only
    out = tq4_decompress(packed, norms, codebook.centroids.to(device), eye, dtype=torch.float32)
    expected = reference.decompress(packed.cpu(), norms.cpu().double(), 4, 64, rotation=torch.eye(64), dtype=torch.float64)
    assert_close(out, expected, torch.float32)


def test_tq4_errors(device):
    x = torch.randn(1, 2, 4, 64, device=device)
    with pytest.raises(ValueError, match="pass both packed_out and norms_out"):
        tq4_compress(x, packed_out=torch.zeros(1, 2, 4, 32, dtype=torch.uint8, device=device))
    with pytest.raises(ValueError, match="start=1 needs packed_out"):
        tq4_compress(x, start=1)
    with pytest.raises(ValueError, match="head_dim must be even and in"):
        tq4_decompress(torch.zeros(1, 2, 4, 8, dtype=torch.uint8, device=device), torch.zeros(1, 2, 4, device=device))
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        tq4_decompress(torch.zeros(1, 2, 4, 32, device=device), torch.zeros(1, 2, 4, device=device))


def test_compressed_tensor_type():
    assert isinstance(TurboQuant(64, 2).empty(1, 1, 1), CompressedTensor)


# --------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_bf16_round_trip_long(device):
    tq = TurboQuant(128, 4)
    x = torch.randn(1, 8, 32768, 128, device=device, dtype=torch.bfloat16)
    cache = tq.empty(1, 8, 40000, device)
    tq.compress(x, out=cache, start=100)
    out = tq.decompress(CompressedTensor(cache.packed[:, :, 100:32868], cache.norms[:, :, 100:32868], 4, 128,
                                         cache.centroids, cache.rotation), dtype=torch.bfloat16)
    measured = ((x.float() - out.float()).square().sum(-1) / x.float().square().sum(-1)).mean().item()
    assert measured == pytest.approx(tq.codebook.mse(), rel=0.05)


@pytest.mark.parametrize("bits", (4.0, True, "4", None))
def test_bits_of_the_wrong_type_are_refused_at_construction(bits):
    with pytest.raises(TypeError, match="bits must be an int"):
        TurboQuant(64, bits=bits)
