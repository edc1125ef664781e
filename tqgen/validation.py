"""Input checks shared by every public entry point.

Each check raises ``ValueError`` (``TypeError`` for a wrong dtype) whose message
names the argument and says what was expected, so bad input never reaches a
kernel as a Triton compile error or a silent wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tqgen.spec import BITS_FOR_LEVELS, MAX_GROUP, check_bits, check_head_dim
from tqgen.tuning.arch import interpreting

__all__ = [  # the head-dim and width rules are tqgen.spec's, re-exported for the entry points
    "FLOAT_DTYPES", "as_last_dim_contiguous", "bits_of_codebook", "check_batch_indices", "check_bits",
    "check_gqa_group", "check_head_dim", "check_norms", "check_same_device", "check_shape", "check_tensor",
    "check_vectors", "forward_only", "wants_grad",
]

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


def check_vectors(name: str, t: object, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """``t`` is ``[B, H, N, D]`` vectors of one of ``dtypes`` with a head_dim the kernels take;
    returned with a unit last-dim stride (see :func:`as_last_dim_contiguous`)."""
    check_tensor(name, t, ndim=4, dtypes=dtypes)
    check_head_dim(name, t.shape[-1])
    return as_last_dim_contiguous(t)


def check_gqa_group(q_heads: int, kv_heads: int, q_name: str = "q heads", kv_name: str = "k/v heads") -> int:
    """The GQA group ``q_heads // kv_heads``: a whole number of query heads per KV head, at most MAX_GROUP."""
    if kv_heads < 1 or q_heads % kv_heads:
        raise ValueError(f"{q_name} ({q_heads}) must be a multiple of {kv_name} ({kv_heads})")
    group = q_heads // kv_heads
    if group > MAX_GROUP:
        raise ValueError(f"{q_name} / {kv_name} = {group}: GQA groups of at most {MAX_GROUP} are supported")
    return group


def bits_of_codebook(name: str, centroids: object) -> int:
    """The code width a float codebook of ``2**bits`` centroids stands for (the seed API passes only
    the codebook)."""
    check_tensor(name, centroids, dtypes=FLOAT_DTYPES)
    bits = BITS_FOR_LEVELS.get(centroids.numel())
    if bits is None:
        sizes, widths = _either(sorted(BITS_FOR_LEVELS)), _either(sorted(BITS_FOR_LEVELS.values()))
        raise ValueError(f"{name} must hold {sizes} values ({widths}-bit codes), got {centroids.numel()}")
    return bits


def _either(values: list[int]) -> str:
    """``[4, 8, 16]`` -> ``"4, 8 or 16"``."""
    return " or ".join(filter(None, (", ".join(map(str, values[:-1])), str(values[-1]))))


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


def as_last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy of it when its last dim is strided: the kernels take any strides
    but that one."""
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
