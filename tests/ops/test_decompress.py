"""The decompress kernel against the PyTorch reference (tqgen.quant.reference.decompress)."""

from __future__ import annotations

import pytest
import torch

from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix
from tqgen.testing import assert_close, poison_
from tqgen.turboquant import decompress_into

HEAD_DIMS = (32, 64, 80, 96, 128, 256)


def _codes(shape: tuple[int, int, int, int], bits: int, device: str):
    """Reference-compressed random vectors (the kernel under test only decodes)."""
    packed, norms = reference.compress(torch.randn(shape, device=device), bits)
    return packed, norms


def _decompress(packed, norms, bits, head_dim, dtype, rotated):
    out = poison_(torch.empty((*packed.shape[:3], head_dim), dtype=dtype, device=packed.device))
    centroids = lloyd_max_codebook(head_dim, bits).centroids.to(packed.device)
    rotation = rotation_matrix(head_dim, device=packed.device)
    return decompress_into(packed, norms, centroids, rotation, out, bits=bits, rotated=rotated)


def _expected(packed, norms, bits, head_dim, rotated):
    return reference.decompress(packed.cpu(), norms.cpu().double(), bits, head_dim, rotated=rotated, dtype=torch.float64)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("bits", (2, 3, 4))
@pytest.mark.parametrize("rotated", (False, True), ids=("original", "rotated"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.float32), ids=("fp16", "fp32"))
def test_matches_reference(device, head_dim, bits, rotated, dtype):
    packed, norms = _codes((2, 2, 37, head_dim), bits, device)
    out = _decompress(packed, norms, bits, head_dim, dtype, rotated)
    assert out.dtype == dtype
    assert_close(out, _expected(packed, norms, bits, head_dim, rotated), dtype)


@pytest.mark.parametrize("bits", (2, 3, 4))
@pytest.mark.parametrize("n_tokens", (1, 130))
@pytest.mark.parametrize("rotated", (False, True), ids=("original", "rotated"))
def test_lengths_and_unaligned_head_dim(device, bits, n_tokens, rotated):
    """Length 1 and more than one token block; head_dim 90 has padded 3-bit coordinates."""
    packed, norms = _codes((1, 3, n_tokens, 90), bits, device)
    out = _decompress(packed, norms, bits, 90, torch.float32, rotated)
    assert_close(out, _expected(packed, norms, bits, 90, rotated), torch.float32)


def test_strided_codes_and_norms_with_trailing_one(device):
    """Codes read from a slice of a larger buffer; norms given as [B, H, N, 1]."""
    packed, norms = _codes((2, 3, 40, 64), 4, device)
    packed_view, norms_view = packed[:, :, 5:30], norms[:, :, 5:30].unsqueeze(-1)
    out = _decompress(packed_view, norms_view, 4, 64, torch.float16, rotated=False)
    assert_close(out, _expected(packed_view, norms_view.squeeze(-1), 4, 64, False), torch.float16)


def test_zero_norm_decodes_to_zero(device):
    packed, norms = _codes((1, 1, 4, 64), 3, device)
    norms[0, 0, 1] = 0
    for rotated in (False, True):
        out = _decompress(packed, norms, 3, 64, torch.float32, rotated)
        assert (out[0, 0, 1] == 0).all()


def test_writes_into_strided_out(device):
    """out may be a view with strided heads/tokens (contiguous last dim)."""
    packed, norms = _codes((2, 2, 9, 64), 2, device)
    storage = poison_(torch.empty(2, 9, 2, 64, device=device))
    out = storage.transpose(1, 2)
    centroids = lloyd_max_codebook(64, 2).centroids.to(device)
    decompress_into(packed, norms, centroids, rotation_matrix(64, device=device), out, bits=2)
    assert_close(out, _expected(packed, norms, 2, 64, False), torch.float32)


# ------------------------------------------------------------------ errors
def _args(device, head_dim=64, bits=4):
    packed, norms = _codes((1, 2, 3, head_dim), bits, device)
    return dict(
        packed=packed, norms=norms, centroids=lloyd_max_codebook(head_dim, bits).centroids.to(device),
        rotation=rotation_matrix(head_dim, device=device), out=torch.empty(1, 2, 3, head_dim, device=device),
        bits=bits,
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(rotation=None), "rotation is required"),
        (dict(bits=3), r"packed must have shape .*bits=3"),
        (dict(centroids=torch.zeros(8)), "centroids must have shape"),
        (dict(packed=torch.zeros(1, 2, 3, 32, dtype=torch.int16)), "packed must have dtype uint8"),
        (dict(packed=torch.zeros(1, 2, 4, 32, dtype=torch.uint8)), "packed must have shape"),
        (dict(norms=torch.zeros(1, 2, 3, 2)), "norms must have shape"),
        (dict(norms=torch.zeros(1, 2, 3, dtype=torch.float64)), "norms must have dtype float32"),
        (dict(out=torch.empty(1, 2, 3, 64, dtype=torch.int32)), "out must have dtype"),
        (dict(out=torch.empty(1, 2, 3, 66)), "packed must have shape"),
        (dict(out=torch.empty(1, 2, 3, 258)), "head_dim must be even and in"),
        (dict(out=lambda dev: torch.empty(1, 2, 3, 128, device=dev)[..., ::2]), "out must be contiguous in its last dim"),
    ],
)
def test_bad_arguments(device, change, match):
    args = _args(device)
    # a callable builds its tensor on the device (.to() would make a strided tensor contiguous)
    args.update({k: v(device) if callable(v) else v.to(device) if isinstance(v, torch.Tensor) else v for k, v in change.items()})
    with pytest.raises((ValueError, TypeError), match=match):
        decompress_into(**args)


def test_device_mismatch():
    args = _args("cpu")
    args["out"] = args["out"].to("meta")
    with pytest.raises(ValueError, match="tensors must be on one device"):
        decompress_into(**args)


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        decompress_into(**_args("cpu"))


# --------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("rotated", (False, True), ids=("original", "rotated"))
@pytest.mark.parametrize("head_dim", (128, 256))
def test_bf16_and_long_sequence(device, rotated, head_dim):
    packed, norms = _codes((1, 2, 32768, head_dim), 4, device)
    out = _decompress(packed, norms, 4, head_dim, torch.bfloat16, rotated)
    assert_close(out, _expected(packed, norms, 4, head_dim, rotated), torch.bfloat16)
