"""The PTX codebook lookups, run bit for bit through the CPU emulator on every code byte."""

from __future__ import annotations

import pytest
import torch

from tqgen.gluon import lookup
from tqgen.quant import lloyd_max_codebook


def _setup(head_dim: int, dtype: torch.dtype) -> tuple[list[int], lookup.LookupTables]:
    bits = lookup.half_bits(lloyd_max_codebook(head_dim, 4).centroids, dtype)
    return bits, lookup.tables(bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_codebook_is_symmetric_in_the_kernel_dtype(head_dim: int, dtype: torch.dtype) -> None:
    bits, _ = _setup(head_dim, dtype)
    assert lookup.is_symmetric(bits)


def test_asymmetric_codebook_is_refused() -> None:
    bits = lookup.half_bits(torch.linspace(-1.0, 0.9, 16), torch.float16)
    assert not lookup.is_symmetric(bits)
    with pytest.raises(ValueError, match="not symmetric"):
        lookup.tables(bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_key_lookup_every_byte(dtype: torch.dtype) -> None:
    """pack=4: word of bytes b0..b3 -> (even coordinate values, odd coordinate values) of each byte."""
    bits, tab = _setup(128, dtype)
    asm = lookup.key_lookup_asm(tab)
    for first in range(256):  # every byte value in every position, with random neighbours
        bs = [first, *torch.randint(0, 256, (3,)).tolist()]
        bs = bs[-(first % 4):] + bs[:-(first % 4)] if first % 4 else bs
        word = bs[0] | bs[1] << 8 | bs[2] << 16 | bs[3] << 24
        r = lookup.emulate(asm, {"$4": word, "$5": tab.lo0, "$9": tab.hi0})
        even = [r["$0"] & 0xFFFF, r["$0"] >> 16, r["$1"] & 0xFFFF, r["$1"] >> 16]
        odd = [r["$2"] & 0xFFFF, r["$2"] >> 16, r["$3"] & 0xFFFF, r["$3"] >> 16]
        assert even == [bits[b >> 4] for b in bs], f"bytes {bs}"
        assert odd == [bits[b & 15] for b in bs], f"bytes {bs}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_value_lookup_pairs_tokens(dtype: torch.dtype) -> None:
    """pack=2: (token t bytes c, c+1 | token t+1 bytes c, c+1) -> each output register holds the
    value of one coordinate for token t (low half) and token t+1 (high half)."""
    bits, tab = _setup(128, dtype)
    asm = lookup.value_lookup_asm(tab)
    for _ in range(300):
        t0c, t0c1, t1c, t1c1 = torch.randint(0, 256, (4,)).tolist()
        word = t0c | t0c1 << 8 | t1c << 16 | t1c1 << 24
        r = lookup.emulate(asm, {"$4": word, "$5": tab.lo0, "$7": tab.hi0})
        assert r["$0"] == bits[t0c >> 4] | bits[t1c >> 4] << 16  # even coordinate of byte c
        assert r["$1"] == bits[t0c1 >> 4] | bits[t1c1 >> 4] << 16  # even coordinate of byte c + 1
        assert r["$2"] == bits[t0c & 15] | bits[t1c & 15] << 16  # odd coordinate of byte c
        assert r["$3"] == bits[t0c1 & 15] | bits[t1c1 & 15] << 16
