"""Thin launchers of the generated kernels.

Each module validates its inputs (clear errors naming the argument), picks the
variant and its launch config (``tqgen.tuning``), and launches one kernel.  They
allocate only the outputs the caller did not pass and never poison them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
