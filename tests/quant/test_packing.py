import pytest
import torch

from tqgen.quant import SUPPORTED_BITS, pack, packed_width, plane_width, planes, unpack

HEAD_DIMS = [32, 34, 64, 80, 96, 128, 130, 256]


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_round_trip(bits: int, head_dim: int) -> None:
    generator = torch.Generator().manual_seed(head_dim * 10 + bits)
    indices = torch.randint(0, 2**bits, (3, 5, head_dim), generator=generator).to(torch.uint8)
    packed = pack(indices, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 5, packed_width(head_dim, bits))
    assert torch.equal(unpack(packed, bits, head_dim), indices)


def test_widths() -> None:
    assert [packed_width(128, b) for b in (4, 3, 2)] == [64, 48, 32]
    assert [planes(b) for b in (2, 3, 4)] == [4, 8, 2]
    assert plane_width(130, 3) == 17 and packed_width(130, 3) == 51  # ceil(390/8) = 49, +2 bytes
    assert packed_width(130, 2) == 33 and packed_width(130, 4) == 65
    assert packed_width(80, 3) == 30


def test_four_bit_layout() -> None:
    indices = torch.tensor([1, 2, 3, 4, 15, 0], dtype=torch.uint8)
    assert pack(indices, 4).tolist() == [0x12, 0x34, 0xF0]


def test_two_bit_layout() -> None:
    indices = torch.tensor([1, 2, 3, 0, 3, 1], dtype=torch.uint8)
    # byte 0: 01 10 11 00 ; byte 1: 11 01 (padding 00 00)
    assert pack(indices, 2).tolist() == [0b01101100, 0b11010000]


def test_three_bit_layout() -> None:
    indices = torch.tensor([5, 0, 7, 1, 2, 3, 4, 6, 1, 7], dtype=torch.uint8)
    # bit 0 of each index: 1 0 1 1 0 1 0 0 | 1 1 (padding 0)
    # bit 1:               0 0 1 0 1 1 0 1 | 0 1
    # bit 2:               1 0 1 0 0 0 1 1 | 0 1
    expected = [0b10110100, 0b11000000, 0b00101101, 0b01000000, 0b10100011, 0b01000000]
    assert pack(indices, 3).tolist() == expected


def test_empty_batch() -> None:
    indices = torch.zeros(0, 64, dtype=torch.uint8)
    assert pack(indices, 3).shape == (0, 24)
    assert unpack(pack(indices, 3), 3, 64).shape == (0, 64)


def test_rejects_bad_inputs() -> None:
    good = torch.zeros(4, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="bits"):
        pack(good, 5)
    with pytest.raises(ValueError, match="indices"):
        pack(good.to(torch.int32), 4)
    with pytest.raises(ValueError, match="indices"):
        pack(torch.full((2, 8), 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="packed"):
        unpack(torch.zeros(4, 5, dtype=torch.uint8), 4, 8)
    with pytest.raises(ValueError, match="packed"):
        unpack(torch.zeros(4, 4, dtype=torch.int16), 4, 8)
    with pytest.raises(ValueError, match="bits"):
        unpack(torch.zeros(4, 4, dtype=torch.uint8), 1, 8)
