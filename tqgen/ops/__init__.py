"""Thin launchers of the generated kernels, one op per module.

One contract for every launcher: it takes the variant (``VariantSpec``), its launch config and
tensors its caller has already checked, builds the kernel arguments and the grid, and launches.
The checks (clear errors naming the argument) and the config lookups live in the public entry
points, built from :mod:`tqgen.validation`: :mod:`tqgen.attention`, :mod:`tqgen.turboquant`,
:mod:`tqgen.scores`, and the custom operators of :mod:`tqgen.ops.library`.  Launchers allocate
nothing but cached derived values and the decode workspace (and, alone among them, the
compressed prefill's dequantise route its transient K/V scratch: :mod:`tqgen.ops.prefill_dequant`),
and never poison outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch


def cdiv(a: int, b: int) -> int:
    """Ceil division for grid sizes on the host.

    ``triton.cdiv`` is a ``@triton.jit`` function: called from Python it goes through
    the JIT dispatcher (about 4 us a call), which is half of the decode dispatcher's own
    host time.
    """
    return -(-a // b)


def version_of(t: torch.Tensor) -> int:
    """``t``'s in-place version counter, for caches of values derived from a tensor.  Inference
    tensors have none (and cannot be modified in place outside inference mode): they count as
    never modified."""
    return 0 if t.is_inference() else t._version


def stream_id(device: torch.device) -> int:
    """The current CUDA stream of ``device`` (0 off the GPU): per-stream buffers are keyed by it."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


_DERIVED: "OrderedDict[tuple[Any, ...], tuple[torch.Tensor, int, Any]]" = OrderedDict()
_DERIVED_MAX = 1024


def derived(kind: str, t: torch.Tensor, extra: Any, make: Callable[[], Any]) -> Any:
    """``make()``, cached per (``kind``, the memory ``t`` views, ``extra``) and ``t``'s version.

    Codebooks and rotations are tiny and reused every call; deriving from them once (a dtype
    conversion, lookup tables, a permuted copy) keeps the hot path free of allocations, so a
    captured CUDA graph stays valid.  The key is the viewed memory (address, dtype, shape,
    strides), not the Python object: torch.compile hands custom ops fresh views of the same
    buffers on every call.  Each entry holds its source tensor, so that memory cannot be
    freed and reused by another tensor while the entry lives (least recently used entries go
    past ``_DERIVED_MAX``).  Values are made outside inference mode, so calls in and out of it
    can share them.
    """
    key = (kind, t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), extra)
    hit = _DERIVED.get(key)
    if hit is not None and hit[1] == version_of(t):
        _DERIVED.move_to_end(key)
        return hit[2]
    with torch.inference_mode(False):
        value = make()
    _DERIVED[key] = (t, version_of(t), value)
    if len(_DERIVED) > _DERIVED_MAX:
        _DERIVED.popitem(last=False)
    return value
