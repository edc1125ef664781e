"""The compress kernel against the PyTorch reference (tqgen.quant.reference.compress)."""

from __future__ import annotations

import pytest
import torch

from tqgen.quant import lloyd_max_codebook, pack, packed_width, reference, rotation_matrix, unpack
from tqgen.testing import NORM_RTOL
from tqgen.turboquant import compress_into

HEAD_DIMS = (32, 64, 80, 96, 128, 256)
NEAR_TIE = 1e-5  # |y - boundary| below which fp32 rounding may pick either cell
SENTINEL = 0xA5


def _buffers(batch: int, heads: int, capacity: int, head_dim: int, bits: int, device: str):
    """Poisoned output buffers: sentinel bytes and NaN norms."""
    packed = torch.full((batch, heads, capacity, packed_width(head_dim, bits)), SENTINEL, dtype=torch.uint8, device=device)
    norms = torch.full((batch, heads, capacity), float("nan"), device=device)
    return packed, norms


def _compress(x: torch.Tensor, bits: int, packed=None, norms=None, start: int = 0):
    batch, heads, n, head_dim = x.shape
    if packed is None:
        packed, norms = _buffers(batch, heads, n, head_dim, bits, x.device.type)
    codebook = lloyd_max_codebook(head_dim, bits).to(x.device)
    compress_into(x, rotation_matrix(head_dim, device=x.device), codebook.boundaries, packed, norms, bits=bits, start=start)
    return packed, norms


def _distance_to_boundary(y: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """|y - nearest boundary|, elementwise (boundaries ascending)."""
    above = torch.searchsorted(boundaries, y.contiguous()).clamp(1, boundaries.numel() - 1)
    return torch.minimum((y - boundaries[above - 1]).abs(), (y - boundaries[above]).abs())


def assert_codes_match(packed: torch.Tensor, norms: torch.Tensor, x: torch.Tensor, bits: int) -> None:
    """Codes equal the reference's except where the float64 rotated coordinate is a near-tie;
    padding bits are zero; norms within 1e-6 relative."""
    head_dim = x.shape[-1]
    ref_packed, ref_norms = reference.compress(x.float(), bits)
    codes = unpack(packed.cpu(), bits, head_dim)
    ref_codes = unpack(ref_packed.cpu(), bits, head_dim)
    x64 = x.cpu().double()
    y = x64 / torch.linalg.vector_norm(x64, dim=-1, keepdim=True).clamp_min(1e-300)
    y = y @ rotation_matrix(head_dim).double().T
    near_tie = _distance_to_boundary(y, lloyd_max_codebook(head_dim, bits).boundaries.double()) < NEAR_TIE
    wrong = (codes != ref_codes) & ~near_tie
    assert not wrong.any(), f"{int(wrong.sum())} codes differ from the reference, first at {wrong.nonzero()[:5].tolist()}"
    assert torch.equal(pack(codes, bits), packed.cpu()), "padding bits of the packed codes are not zero"
    torch.testing.assert_close(norms.cpu(), ref_norms.cpu(), rtol=NORM_RTOL, atol=0)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("bits", (2, 3, 4))
def test_matches_reference(device, head_dim, bits):
    x = torch.randn(2, 2, 37, head_dim, device=device)
    packed, norms = _compress(x, bits)
    assert_codes_match(packed, norms, x, bits)


@pytest.mark.parametrize("bits", (2, 3, 4))
@pytest.mark.parametrize("n_tokens", (1, 130))
def test_lengths_and_unaligned_head_dim(device, bits, n_tokens):
    """Length 1 and more than one token block; head_dim 90 leaves padded coordinates for 3-bit."""
    x = torch.randn(1, 3, n_tokens, 90, device=device)
    packed, norms = _compress(x, bits)
    assert_codes_match(packed, norms, x, bits)


@pytest.mark.parametrize("dtype", (torch.float16, torch.float32))
def test_strided_input(device, dtype):
    """x as a [B, N, H, D] tensor viewed as [B, H, N, D]: strided heads and tokens."""
    x = torch.randn(2, 37, 3, 64, device=device).to(dtype).transpose(1, 2)
    packed, norms = _compress(x, 4)
    assert_codes_match(packed, norms, x, 4)


@pytest.mark.parametrize("bits", (3, 4))
def test_writes_only_its_token_range(device, bits):
    head_dim, capacity, start = 64, 20, 7
    x = torch.randn(2, 2, 5, head_dim, device=device)
    packed, norms = _buffers(2, 2, capacity, head_dim, bits, device)
    _compress(x, bits, packed, norms, start=start)
    written = slice(start, start + 5)
    assert_codes_match(packed[:, :, written], norms[:, :, written], x, bits)
    outside = torch.ones(capacity, dtype=torch.bool)
    outside[written] = False
    assert (packed[:, :, outside] == SENTINEL).all()
    assert norms[:, :, outside].isnan().all()


def test_writes_into_a_strided_cache_view(device):
    """One layer of a [layers, B, H, cap, W] cache, with norms stored as [..., 1]."""
    head_dim, bits = 64, 4
    packed = torch.full((3, 2, 2, 16, packed_width(head_dim, bits)), SENTINEL, dtype=torch.uint8, device=device)
    norms = torch.full((2, 2, 16, 3, 1), float("nan"), device=device)  # layer last: strided tokens
    x = torch.randn(2, 2, 9, head_dim, device=device)
    _compress(x, bits, packed[1], norms[:, :, :, 1], start=4)
    assert_codes_match(packed[1, :, :, 4:13], norms[:, :, 4:13, 1, 0], x, bits)
    assert (packed[0] == SENTINEL).all() and (packed[2] == SENTINEL).all()
    assert norms[:, :, :, (0, 2)].isnan().all()


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_zero_vectors(device, bits):
    x = torch.randn(1, 2, 6, 64, device=device)
    x[0, 0, 2] = 0
    x[0, 1] = 0
    packed, norms = _compress(x, bits)
    assert (norms[0, 0, 2] == 0) and (norms[0, 1] == 0).all()
    assert not norms.isnan().any()
    decoded = reference.decompress(packed.cpu(), norms.cpu(), bits, 64)
    assert (decoded[0, 1] == 0).all() and (decoded[0, 0, 2] == 0).all()


def test_empty_input_launches_nothing(device):
    packed, norms = _buffers(1, 1, 4, 64, 4, device)
    _compress(torch.randn(1, 1, 0, 64, device=device), 4, packed, norms, start=4)
    assert (packed == SENTINEL).all()


# ------------------------------------------------------------------ errors
def _args(device, head_dim=64, bits=4, n=3, capacity=8):
    x = torch.randn(1, 2, n, head_dim, device=device)
    packed, norms = _buffers(1, 2, capacity, head_dim, bits, device)
    codebook = lloyd_max_codebook(head_dim, bits)
    return dict(x=x, rotation=rotation_matrix(head_dim, device=device), boundaries=codebook.boundaries.to(device),
                packed=packed, norms=norms, bits=bits)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(start=6), r"start \+ N = 6 \+ 3 = 9 exceeds the buffer capacity 8"),
        (dict(start=-1), "start must be an int >= 0"),
        (dict(bits=5), "bits must be one of"),
        (dict(x=torch.randn(1, 2, 3, 63)), "head_dim must be even"),
        (dict(x=torch.randn(1, 2, 3, 16)), "head_dim must be even and in"),
        (dict(x=torch.randn(2, 3, 64)), "x must have 4 dimensions"),
        (dict(x=torch.randint(0, 3, (1, 2, 3, 64))), "x must have dtype"),
        (dict(packed=torch.zeros(1, 2, 8, 32, dtype=torch.int32)), "packed must have dtype uint8"),
        (dict(packed=torch.zeros(1, 2, 8, 31, dtype=torch.uint8)), r"packed must have shape .*packed_width"),
        (dict(norms=torch.zeros(1, 2, 8, dtype=torch.float16)), "norms must have dtype float32"),
        (dict(norms=torch.zeros(1, 2, 7)), "norms must have shape"),
        (dict(rotation=torch.eye(32)), "rotation must have shape"),
        (dict(boundaries=torch.zeros(7)), "boundaries must have shape"),
    ],
)
def test_bad_arguments(device, change, match):
    args = _args(device)
    args.update({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    start = args.pop("start", 0)
    with pytest.raises((ValueError, TypeError), match=match):
        compress_into(**args, start=start)


def test_device_mismatch():
    args = _args("cpu")
    args["norms"] = args["norms"].to("meta")
    with pytest.raises(ValueError, match="tensors must be on one device"):
        compress_into(**args)


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        compress_into(**_args("cpu"))


# --------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", (128, 256))
def test_bf16_and_long_sequence(device, head_dim):
    x = torch.randn(1, 2, 32768, head_dim, device=device, dtype=torch.bfloat16)
    packed, norms = _compress(x, 4)
    assert_codes_match(packed, norms, x, 4)
