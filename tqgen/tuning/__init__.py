"""Choosing launch configs: per-arch defaults, the tune cache, and (on a GPU) the tuner."""

from tqgen.tuning.arch import ARCH_LIMITS, ArchLimits, current_arch
from tqgen.tuning.cache import config_for, configs_for, launch_config, load_tune_cache
from tqgen.tuning.buckets import shape_bucket

__all__ = [
    "ARCH_LIMITS",
    "ArchLimits",
    "config_for",
    "configs_for",
    "current_arch",
    "launch_config",
    "load_tune_cache",
    "shape_bucket",
]
