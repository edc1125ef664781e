"""What the hot path reads to launch a kernel: arch limits, documented default configs, shape
buckets, the split-K policy and the tune cache (lookups, and the atomic writer the tuner uses).

The search that fills the tune cache on a GPU is ``tqgen.bench.tune`` (``python -m tqgen tune``):
it times candidates with the benchmark harness, so it sits above this package, never below it.
"""

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
