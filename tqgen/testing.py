"""Assertion helpers shared by the tests, benchmarks and GPU checks.

Tolerances live here, in one place, per output dtype.  ``assert_close`` says
where and by how much two tensors differ instead of just "not close".
"""

from __future__ import annotations

import torch

# Max abs error allowed relative to the reference's scale (max |ref|), and a
# relative-L2 bound.  fp32 outputs still go through fp16/bf16 tensor-core dots.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float16: {"atol": 2e-2, "rel_l2": 5e-3},
    torch.bfloat16: {"atol": 8e-2, "rel_l2": 2e-2},
    torch.float32: {"atol": 2e-2, "rel_l2": 5e-3},
    torch.float64: {"atol": 1e-6, "rel_l2": 1e-7},
}


# Compress norms against the float64 norm: the kernel takes ||x|| as ||x @ Pi.T|| from the
# tensor-core rotation (fp32 accumulation over head_dim terms, Pi to ~2^-22), measured up to
# 1.05e-6 relative at head_dim 256 (bf16, H200).
NORM_RTOL = 4e-6


# Whole-model logits after several layers of fp16 attention (Hugging Face tests): the
# kernels' fp16 rounding compounds through every layer and the LM head.
LOGITS_TOLERANCE: dict[str, float] = {"atol": 3e-2, "rel_l2": 2e-2}


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (or 0xFF for integers) so unwritten elements fail."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max if t.dtype != torch.bool else True)


def describe_difference(actual: torch.Tensor, expected: torch.Tensor, limit: int = 5) -> str:
    """Where and how much ``actual`` and ``expected`` differ (worst elements first)."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    diff = (a - e).abs()
    nan = torch.isnan(a) & ~torch.isnan(e)
    lines = [f"shape {tuple(a.shape)}, {int(nan.sum())} unexpected NaN, max |diff| {diff.nan_to_num(float('inf')).max().item():.3e}"]
    if nan.any():
        first = [tuple(i.tolist()) for i in nan.nonzero()[:limit]]
        lines.append(f"  NaN at {first}")
    flat = diff.nan_to_num(float("inf")).flatten()
    worst = flat.topk(min(limit, flat.numel())).indices
    for i in worst:
        idx = tuple(int(x) for x in torch.unravel_index(i, a.shape))
        lines.append(f"  at {idx}: actual {a[idx].item():+.6f} expected {e[idx].item():+.6f}")
    return "\n".join(lines)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    name: str = "output",
    tolerance: dict[str, float] | None = None,
) -> None:
    """Compare with per-dtype tolerances (scaled by the reference's magnitude), or ``tolerance``."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    tol = tolerance or TOLERANCES[dtype or actual.dtype]
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if torch.isnan(a).any() and not torch.isnan(e).any():
        raise AssertionError(f"{name}: NaN in output\n{describe_difference(a, e)}")
    scale = max(e.abs().max().item(), 1e-6) if e.numel() else 1.0
    max_err = (a - e).abs().max().item() if e.numel() else 0.0
    rel_l2 = ((a - e).norm() / e.norm().clamp_min(1e-12)).item() if e.numel() else 0.0
    if max_err > tol["atol"] * scale or rel_l2 > tol["rel_l2"]:
        raise AssertionError(
            f"{name}: max err {max_err:.3e} (allowed {tol['atol'] * scale:.3e}), "
            f"rel L2 {rel_l2:.3e} (allowed {tol['rel_l2']:.1e})\n{describe_difference(a, e)}"
        )
