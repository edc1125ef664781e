"""Input checks shared by every public entry point.

Each check raises ``ValueError`` (``TypeError`` for a wrong dtype) whose message
names the argument and says what was expected, so bad input never reaches a
kernel as a Triton compile error or a silent wrong answer.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch

from tqgen.spec import MAX_HEAD_DIM, MIN_HEAD_DIM, SUPPORTED_BITS
from tqgen.tuning.arch import interpreting

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | Iterable[int] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
) -> torch.Tensor:
    """``t`` is a tensor of the given rank(s) and dtype(s)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype {want}; got {str(t.dtype).replace('torch.', '')}")
    return t


def check_head_dim(name: str, head_dim: int) -> int:
    if head_dim % 2 or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{name}: head_dim must be even and in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {head_dim}")
    return head_dim


def check_bits(name: str, bits: int) -> int:
    """An int code width in SUPPORTED_BITS (4.0 or True are refused: they fail later, unclearly)."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name}: bits must be an int, one of {SUPPORTED_BITS}; got {type(bits).__name__} {bits!r}")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{name}: bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return int(bits)


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; on the CPU only when Triton's interpreter is on."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    distinct = set(devices.values())
    if len(distinct) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device: {listing}")
    device = next(iter(distinct))
    if device.type == "cpu" and not interpreting():
        names = ", ".join(devices)
        raise ValueError(
            f"{names} are CPU tensors: tqgen's Triton kernels need a CUDA device, "
            "or TRITON_INTERPRET=1 set before tqgen is imported to run them on the CPU interpreter"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"tensors must be on a CUDA device (or the CPU interpreter), got {device}")
    return device


def check_shape(name: str, t: torch.Tensor, expected: tuple[int | None, ...], meaning: str) -> None:
    """``t.shape`` matches ``expected`` (None = any); ``meaning`` spells the dims, e.g. ``[B, H_kv, N, D/2]``."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {meaning} = {want}, got {tuple(t.shape)}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> torch.Tensor:
    """Kernels take any strides except along the last dim; copy only if that one is strided."""
    return t if t.stride(-1) == 1 else t.contiguous()


def check_norms(name: str, norms: torch.Tensor, leading: tuple[int, ...]) -> torch.Tensor:
    """fp32 norms of shape ``leading`` = (B, H, N) or (B, H, N, 1); returns the [B, H, N] view."""
    check_tensor(name, norms, ndim=(len(leading), len(leading) + 1), dtypes=(torch.float32,))
    if norms.dim() == len(leading) + 1 and norms.shape[-1] == 1:
        norms = norms.squeeze(-1)
    check_shape(name, norms, tuple(leading), "[B, H, N] (or [B, H, N, 1])")
    return norms


def check_batch_indices(name: str, indices: object, batch: int) -> torch.Tensor:
    """A 1-d integer tensor of row indices into a batch of ``batch`` rows, each in ``[0, batch)``.

    Reads the range back to the host (one sync): a reordering happens once per beam step.
    """
    t = check_tensor(name, indices, ndim=1)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be an integer tensor of row indices, got dtype {str(t.dtype).replace('torch.', '')}")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= batch:
            raise ValueError(
                f"{name} must hold row indices in [0, {batch}) (the cache holds a batch of {batch}), "
                f"got values from {lo} to {hi}"
            )
    return t


def wants_grad(*values: object) -> bool:
    """Would autograd need a gradient through a kernel reading ``values``?  (Tensors, or
    CompressedTensor-like objects whose ``norms`` might require grad.)"""
    if not torch.is_grad_enabled():
        return False
    for value in values:
        t = value if isinstance(value, torch.Tensor) else getattr(value, "norms", None)
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return True
    return False


class _Box:
    """Carries the kernel's output through ``Function.apply`` without making it an input."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _NoBackward(torch.autograd.Function):
    """Attaches a grad_fn that raises: the graph is not silently cut, and backward says why."""

    @staticmethod
    def forward(ctx, box: _Box, name: str, *inputs: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        ctx.name = name
        return box.tensor

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> None:
        raise RuntimeError(
            f"{ctx.name} has no backward pass: tqgen's kernels compute the forward only, so no gradient "
            "can flow through them. Run inference under torch.no_grad() or torch.inference_mode(); to "
            "train, use an attention with a backward (e.g. model.set_attn_implementation('sdpa'))"
        )


def forward_only(name: str, run, *inputs: object, out: torch.Tensor | None = None) -> torch.Tensor:
    """``run()`` (a kernel launch) for inputs that require grad: the result carries a grad_fn whose
    backward raises a clear error, rather than being a tensor silently cut from the graph.

    ``out=`` cannot carry a graph (as in torch), so it is refused when a gradient is wanted.
    """
    if out is not None:
        raise ValueError(
            f"{name}: out= is not supported when an input requires grad (autograd cannot track a "
            "preallocated output); pass out=None, or run under torch.no_grad()"
        )
    with torch.no_grad():
        result = run()
    tensors = [v if isinstance(v, torch.Tensor) else v.norms for v in inputs
               if isinstance(v, torch.Tensor) or isinstance(getattr(v, "norms", None), torch.Tensor)]
    return _NoBackward.apply(_Box(result), name, *tensors)
