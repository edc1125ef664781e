import math

import pytest
import torch

from tqgen.quant import (
    Codebook,
    compress,
    decompress,
    lloyd_max_codebook,
    packed_width,
    reference_attention,
    rotation_matrix,
    unpack,
)


def loop_attention(q, k, v, scale=None, causal=False, mask=None):
    """Independent oracle: explicit loops over batch, head, query, with math.exp softmax."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    if mask is not None:
        mask = mask.expand(batch, q_heads, q_len, kv_len)
    out = torch.zeros(batch, q_heads, q_len, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(q_heads):
            kv_head = h // group
            for i in range(q_len):
                scores = []
                for j in range(kv_len):
                    if causal and j > i + kv_len - q_len:
                        continue
                    score = float(q[b, h, i].double() @ k[b, kv_head, j].double()) * scale
                    if mask is not None:
                        if mask.dtype == torch.bool:
                            if not mask[b, h, i, j]:
                                continue
                        else:
                            score += float(mask[b, h, i, j])
                    if score == -math.inf:
                        continue
                    scores.append((j, score))
                if not scores:
                    continue
                top = max(s for _, s in scores)
                weights = [(j, math.exp(s - top)) for j, s in scores]
                total = sum(w for _, w in weights)
                for j, w in weights:
                    out[b, h, i] += (w / total) * v[b, kv_head, j].double()
    return out


def make_qkv(group: int, q_len: int, kv_len: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    kv_heads, head_dim = 2, 16
    q = torch.randn(2, kv_heads * group, q_len, head_dim, generator=generator)
    k = torch.randn(2, kv_heads, kv_len, head_dim, generator=generator)
    v = torch.randn(2, kv_heads, kv_len, head_dim, generator=generator)
    return q, k, v


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len, kv_len", [(5, 5), (3, 7), (1, 6)])
def test_attention_matches_loops(group: int, causal: bool, q_len: int, kv_len: int) -> None:
    q, k, v = make_qkv(group, q_len, kv_len)
    out = reference_attention(q, k, v, causal=causal)
    assert out.dtype == torch.float64 and out.shape == q.shape
    assert torch.allclose(out, loop_attention(q, k, v, causal=causal), atol=1e-12)


def test_attention_scale_and_dtype() -> None:
    q, k, v = make_qkv(2, 4, 6)
    out = reference_attention(q, k, v, scale=0.3, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), loop_attention(q, k, v, scale=0.3), atol=1e-6)


def test_bool_mask_with_fully_masked_row() -> None:
    q, k, v = make_qkv(2, 4, 6, seed=1)
    generator = torch.Generator().manual_seed(2)
    mask = torch.rand(2, 1, 4, 6, generator=generator) > 0.4  # broadcast over heads
    mask[0, 0, 1] = False  # no visible key: output must be 0, not NaN
    out = reference_attention(q, k, v, mask=mask, causal=True)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, :, 1] == 0)
    assert torch.allclose(out, loop_attention(q, k, v, mask=mask, causal=True), atol=1e-12)


def test_additive_mask() -> None:
    q, k, v = make_qkv(4, 3, 5, seed=3)
    generator = torch.Generator().manual_seed(4)
    mask = torch.randn(1, 8, 3, 5, generator=generator)
    mask[..., 0, 2] = float("-inf")
    mask[0, 1, 2, :] = float("-inf")  # fully masked row
    out = reference_attention(q, k, v, mask=mask)
    assert torch.all(out[:, 1, 2] == 0)
    assert torch.allclose(out, loop_attention(q, k, v, mask=mask), atol=1e-12)


def test_attention_validation() -> None:
    q, k, v = make_qkv(2, 3, 5)
    with pytest.raises(ValueError, match="q"):
        reference_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k"):
        reference_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="v"):
        reference_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="heads"):
        reference_attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="mask"):
        reference_attention(q, k, v, mask=torch.ones(3, 5, 5, dtype=torch.bool))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_compress_shapes(bits: int, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 7, 128).to(dtype)
    packed, norms = compress(x, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 7, packed_width(128, bits))
    assert norms.dtype == torch.float32 and norms.shape == (2, 3, 7)
    assert torch.allclose(norms, x.float().norm(dim=-1), rtol=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_reconstruction_error_matches_codebook(bits: int) -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4000, 128, generator=generator, dtype=torch.float64) * 3
    packed, norms = compress(x, bits)
    x_hat = decompress(packed, norms, bits, 128, dtype=torch.float64)
    relative = ((x - x_hat).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()
    assert relative == pytest.approx(lloyd_max_codebook(128, bits).mse(), rel=0.03)
    if bits == 4:
        assert relative == pytest.approx(0.009497, rel=0.10)  # Max's Gaussian value


def test_rotated_output_and_norm_shapes() -> None:
    x = torch.randn(5, 64)
    packed, norms = compress(x, 4)
    in_rotated_space = decompress(packed, norms, 4, 64, rotated=True)
    original = decompress(packed, norms.unsqueeze(-1), 4, 64)
    assert torch.allclose(in_rotated_space @ rotation_matrix(64), original, atol=1e-6)
    codebook = lloyd_max_codebook(64, 4)
    expected = codebook.centroids[unpack(packed, 4, 64).long()] * norms[:, None]
    assert torch.equal(in_rotated_space, expected)
    with pytest.raises(ValueError, match="norms"):
        decompress(packed, norms[:4], 4, 64)


def test_zero_vector_round_trips_to_zero() -> None:
    x = torch.zeros(3, 96)
    x[1] = torch.randn(96)
    packed, norms = compress(x, 3)
    assert norms[0] == 0 and norms[2] == 0
    x_hat = decompress(packed, norms, 3, 96)
    assert not torch.isnan(x_hat).any()
    assert torch.all(x_hat[0] == 0) and torch.all(x_hat[2] == 0)


def test_tie_rule_takes_lower_cell() -> None:
    # idx = number of boundaries b with y > b: a coordinate exactly on a boundary takes the lower cell.
    head_dim = 8
    boundaries = torch.tensor([-0.6, 0.0, 0.6])
    codebook = Codebook(head_dim, 2, torch.tensor([-0.9, -0.3, 0.3, 0.9]), boundaries)
    x = torch.zeros(2, head_dim)
    x[0, :2] = torch.tensor([3.0, 4.0])  # unit vector (0.6, 0.8, 0, ...), exact in fp32
    x[1, :2] = torch.tensor([-3.0, 4.0])
    packed, _ = compress(x, 2, rotation=torch.eye(head_dim), codebook=codebook)
    indices = unpack(packed, 2, head_dim)
    assert indices[0].tolist() == [2, 3] + [1] * 6
    assert indices[1].tolist() == [0, 3] + [1] * 6


def test_custom_rotation_and_codebook() -> None:
    x = torch.randn(6, 32)
    rotation = rotation_matrix(32, seed=3)
    codebook = lloyd_max_codebook(32, 2)
    packed, norms = compress(x, 2, rotation=rotation, codebook=codebook)
    same = decompress(packed, norms, 2, 32, rotation=rotation, codebook=codebook)
    other = decompress(packed, norms, 2, 32)
    assert not torch.allclose(same, other)
    with pytest.raises(ValueError, match="bits"):
        compress(x, 3, codebook=codebook)
