"""Random attention problems shared by the attention kernel tests.

A problem holds the kernel inputs (plain tensors or CompressedTensors) and the float64
oracle's inputs: the same data, with compressed operands decompressed by the PyTorch
reference, so every comparison is "kernel vs reference on identical numbers".
Each problem draws a fresh seed; it appears in every failure message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from tqgen.attention import attention
from tqgen.compressed import CompressedTensor
from tqgen.quant import lloyd_max_codebook, reference, rotation_matrix
from tqgen.spec import VariantSpec
from tqgen.testing import assert_close, poison_


@dataclass
class Problem:
    q: torch.Tensor
    k: torch.Tensor | CompressedTensor
    v: torch.Tensor | CompressedTensor
    k_ref: torch.Tensor  # what the oracle sees (decompressed when k is compressed)
    v_ref: torch.Tensor
    seed: int

    def reference(self, causal: bool = False, mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        return reference.reference_attention(self.q, self.k_ref, self.v_ref, scale, causal, mask)

    def run(self, causal: bool = False, mask: torch.Tensor | None = None, *, schedule: str = "auto",
            scale: float | None = None) -> torch.Tensor:
        """Launch into a NaN-poisoned output, so an element the kernel skips fails the test."""
        out = poison_(torch.empty(self.q.shape, dtype=self.q.dtype, device=self.q.device))
        result = attention(self.q, self.k, self.v, scale, causal, mask, out=out, schedule=schedule)
        assert result is out
        return out

    def check(self, causal: bool = False, mask: torch.Tensor | None = None, *, schedule: str = "auto",
              scale: float | None = None, name: str = "") -> torch.Tensor:
        out = self.run(causal, mask, schedule=schedule, scale=scale)
        assert_close(out, self.reference(causal, mask, scale), self.q.dtype, f"{name} seed={self.seed}")
        return out


def compress_operand(x: torch.Tensor, bits: int) -> tuple[CompressedTensor, torch.Tensor]:
    """(CompressedTensor of x, its reference decompression in the original space, fp64)."""
    head_dim = x.shape[-1]
    codebook = lloyd_max_codebook(head_dim, bits).to(x.device)
    rotation = rotation_matrix(head_dim, device=x.device)
    packed, norms = reference.compress(x.float(), bits, rotation, codebook)
    decoded = reference.decompress(packed, norms, bits, head_dim, rotation, codebook, dtype=torch.float64)
    return CompressedTensor(packed, norms, bits, head_dim, codebook.centroids, rotation), decoded


def make_problem(
    *,
    n_q: int,
    n_kv: int,
    head_dim: int,
    group: int = 1,
    kv_heads: int = 1,
    batch: int = 1,
    k_bits: int | None = None,
    v_bits: int | None = None,
    dtype: torch.dtype = torch.float16,
    device: str = "cpu",
) -> Problem:
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = randn(batch, kv_heads * group, n_q, head_dim)
    k = randn(batch, kv_heads, n_kv, head_dim)
    v = randn(batch, kv_heads, n_kv, head_dim)
    k_in, k_ref = compress_operand(k, k_bits) if k_bits else (k, k)
    v_in, v_ref = compress_operand(v, v_bits) if v_bits else (v, v)
    return Problem(q, k_in, v_in, k_ref, v_ref, seed)


def problem_for(spec: VariantSpec, *, n_q: int, n_kv: int, device: str, **kw) -> Problem:
    return make_problem(n_q=n_q, n_kv=n_kv, head_dim=spec.head_dim, group=spec.group,
                        k_bits=spec.k_bits, v_bits=spec.v_bits, device=device, **kw)


def random_length(lo: int, hi: int) -> int:
    """A fresh length in [lo, hi] (lengths are part of the random input)."""
    return lo + secrets.randbelow(hi - lo + 1)
