"""Random orthogonal rotation Pi of TurboQuant: the rotated unit vector is y = Pi @ (x / ||x||).

Pi is built exactly like turboquant_vllm builds it, so tensors compressed by either package are
readable by the other: QR of an fp32 standard-normal matrix drawn on the CPU from
``torch.Generator().manual_seed(seed)``, with the columns' signs fixed by ``sign(diag(R))``
(the Mezzadri correction that makes Pi Haar-distributed).

Convention: rotated ``y = x_unit @ Pi.T``, inverse ``x = y @ Pi``.
"""

from __future__ import annotations

import functools

import torch

from tqgen.spec import ROTATION_MAX_HEAD_DIM, ROTATION_MIN_HEAD_DIM, check_head_dim


@functools.lru_cache(maxsize=None)
def _cpu_rotation(head_dim: int, seed: int) -> torch.Tensor:
    with torch.inference_mode(False):  # cached for every later caller, in or out of inference mode
        generator = torch.Generator().manual_seed(seed)
        gaussian = torch.randn(head_dim, head_dim, generator=generator, dtype=torch.float32)
        q, r = torch.linalg.qr(gaussian)
        return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).contiguous()


@functools.lru_cache(maxsize=None)
def _rotation_on(head_dim: int, seed: int, device_key: str) -> torch.Tensor:
    with torch.inference_mode(False):
        return _cpu_rotation(head_dim, seed).to(device_key)


def rotation_matrix(head_dim: int, seed: int = 42, device=None) -> torch.Tensor:
    """Return the fp32 [head_dim, head_dim] orthogonal rotation Pi for ``seed``.

    The tensor is cached per (head_dim, seed, device) and shared by every caller:
    never modify it in place (clone it first).
    """
    check_head_dim("rotation_matrix", head_dim, ROTATION_MIN_HEAD_DIM, ROTATION_MAX_HEAD_DIM)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    device_key = "cpu" if device is None else str(torch.device(device))
    if device_key == "cpu":
        return _cpu_rotation(head_dim, seed)
    return _rotation_on(head_dim, seed, device_key)
