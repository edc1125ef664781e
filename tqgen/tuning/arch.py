"""What each target architecture can hold, and which one we are running on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ArchLimits:
    """The limits the default configs are derived from."""

    name: str
    smem_per_block: int  # bytes of shared memory one program may use
    sm_count: int  # typical multiprocessor count (the runtime reads the real one)
    interpreter: bool = False


ARCH_LIMITS: dict[str, ArchLimits] = {
    "sm_80": ArchLimits("sm_80", 163 * 1024, 108),  # A100
    "sm_86": ArchLimits("sm_86", 99 * 1024, 84),  # RTX 30xx / A10 / A40
    "sm_89": ArchLimits("sm_89", 99 * 1024, 128),  # RTX 40xx / L4 / L40
    "sm_90": ArchLimits("sm_90", 227 * 1024, 132),  # H100 / H200
    "sm_100": ArchLimits("sm_100", 227 * 1024, 148),  # B200
    # Triton's CPU interpreter: no shared memory limit; large blocks keep the
    # (very slow, ~12 ms per tile iteration) interpreted loops short.
    "cpu": ArchLimits("cpu", 1 << 30, 2, interpreter=True),
}


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def current_arch(device: torch.device | None = None) -> str:
    """``sm_XY`` of a CUDA device, or ``cpu`` when running in the interpreter."""
    if device is not None and torch.device(device).type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def check_arch(arch: str) -> ArchLimits:
    """The limits of ``arch``, or a clear error listing the known ones."""
    if arch not in ARCH_LIMITS:
        raise ValueError(f"arch must be one of {sorted(ARCH_LIMITS)}, got {arch!r}")
    return ARCH_LIMITS[arch]
