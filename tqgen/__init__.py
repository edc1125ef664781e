"""tqgen: generated, autotuned Triton attention kernels for TurboQuant-compressed KV caches."""

from tqgen.version import __version__

__all__ = ["__version__"]
