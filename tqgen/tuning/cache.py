"""The tune cache: ``tune_cache/<arch>.json``, looked up by variant id and shape bucket.

File format::

    {"meta": {"arch": "sm_90", "gpus": {...}, "triton": ..., "torch": ..., "tqgen": ..., "date": ...},
     "entries": {"<variant id>|<bucket>": {"<gpu name>": {"config": {...}, "ms": ..., "candidates": [...]}}}}

Lookups never benchmark: a missing entry falls back to the arch default.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tqgen.paths import TUNE_CACHE_DIR
from tqgen.spec import VariantSpec
from tqgen.tuning.arch import check_arch
from tqgen.tuning.defaults import Config, default_config


@functools.lru_cache(maxsize=None)
def load_tune_cache(arch: str, cache_dir: Path = TUNE_CACHE_DIR) -> dict:
    """The parsed cache for ``arch`` (empty when there is none)."""
    path = cache_dir / f"{arch}.json"
    if not path.exists():
        return {"meta": {"arch": arch}, "entries": {}}
    return json.loads(path.read_text())


def tuned_entry(spec: VariantSpec, arch: str, bucket: str, gpu_name: str | None = None) -> Config | None:
    """The tuned config for this variant and bucket: this GPU's if present, else any GPU of the arch."""
    per_gpu = load_tune_cache(arch)["entries"].get(f"{spec.id}|{bucket}")
    if not per_gpu:
        return None
    if gpu_name in per_gpu:
        return dict(per_gpu[gpu_name]["config"])
    return dict(per_gpu[sorted(per_gpu)[0]]["config"])


def config_for(spec: VariantSpec, arch: str, bucket: str = "any", gpu_name: str | None = None) -> Config:
    """The launch config to use: tuned if cached, else the arch's documented default."""
    limits = check_arch(arch)
    return tuned_entry(spec, arch, bucket, gpu_name) or default_config(spec, limits)


def configs_for(spec: VariantSpec, arch: str) -> dict[str, Config]:
    """Every config the cache holds for ``spec`` on ``arch`` (by bucket), plus the default."""
    limits = check_arch(arch)
    out: dict[str, Config] = {"default": default_config(spec, limits)}
    prefix = f"{spec.id}|"
    for key, per_gpu in sorted(load_tune_cache(arch)["entries"].items()):
        if key.startswith(prefix):
            gpu = sorted(per_gpu)[0]
            out[key[len(prefix):]] = dict(per_gpu[gpu]["config"])
    return out
