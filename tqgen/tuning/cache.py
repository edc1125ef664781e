"""The tune cache: ``tune_cache/<arch>.json``, looked up by variant id and shape bucket.

File format::

    {"meta": {"arch": "sm_90", "gpus": {"<gpu name>": {"sm_count": ..., "triton": ..., "torch": ...,
              "tqgen": ..., "date": ...}}, "triton": ..., "torch": ..., "tqgen": ..., "date": ...},
     "entries": {"<variant id>|<bucket>": {"<gpu name>": {"config": {...}, "ms": ..., "default_ms": ...,
                 "shape": {...}, "candidates": [{"config": {...}, "ms": ..., "error": ...}, ...]}}}}

Entries are kept per GPU name, so an H100 and an H200 (both ``sm_90``) keep their own
choice; a lookup takes this GPU's entry when there is one, else any GPU's of the arch.
``write_entries`` merges into the file under a lock and replaces it atomically, so an
interrupted or concurrent tuner never leaves a half-written cache.

Lookups never benchmark: a missing entry falls back to the arch default.  The tuner
steers launches through ``override`` (a config forced for one variant id) and finds out
which variant and bucket a call uses through ``record_lookups``; both cost the hot path
one empty-container test.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from tqgen.files import atomic_write
from tqgen.paths import TUNE_CACHE_DIR
from tqgen.spec import VariantSpec
from tqgen.tuning.arch import check_arch, current_arch
from tqgen.tuning.defaults import Config, default_config


@dataclass(frozen=True)
class Lookup:
    """One ``config_for`` call seen by ``record_lookups``."""

    spec: VariantSpec
    arch: str
    bucket: str
    config: Config
    overridden: bool


# Tuner hooks (module state, empty outside the tuner).
_OVERRIDES: dict[str, Config] = {}
_RECORDERS: list[list[Lookup]] = []
_INVALIDATORS: list[Callable[[], None]] = []


def register_invalidator(fn: Callable[[], None]) -> Callable[[], None]:
    """Have ``fn`` called whenever configs may have changed (an override starts or ends, the cache
    file is rewritten).  A dispatcher that memoises ``config_for`` registers its ``cache_clear``."""
    if fn not in _INVALIDATORS:
        _INVALIDATORS.append(fn)
    return fn


def invalidate() -> None:
    """Forget every memoised config (the tune cache file and all registered dispatcher caches)."""
    _load.cache_clear()
    launch_config.cache_clear()
    for fn in _INVALIDATORS:
        fn()


@contextlib.contextmanager
def override(spec_id: str, config: Config) -> Iterator[None]:
    """Within the block, ``config_for`` returns ``config`` (over the default) for ``spec_id``, any bucket."""
    previous = _OVERRIDES.get(spec_id)
    _OVERRIDES[spec_id] = dict(config)
    invalidate()
    try:
        yield
    finally:
        if previous is None:
            _OVERRIDES.pop(spec_id, None)
        else:
            _OVERRIDES[spec_id] = previous
        invalidate()


@contextlib.contextmanager
def record_lookups() -> Iterator[list[Lookup]]:
    """Collect every ``config_for`` call made inside the block (the tuner's way to learn which
    variant and bucket a dispatcher picks for a problem)."""
    seen: list[Lookup] = []
    invalidate()  # memoised configs would hide the lookups
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def load_tune_cache(arch: str, cache_dir: Path | None = None) -> dict:
    """The parsed cache for ``arch`` (empty when there is none); ``cache_dir`` defaults to
    ``TUNE_CACHE_DIR`` (read at call time, so tests can point it elsewhere)."""
    return _load(arch, Path(cache_dir or TUNE_CACHE_DIR))


@functools.lru_cache(maxsize=None)
def _load(arch: str, cache_dir: Path) -> dict:
    return _read(cache_dir / f"{arch}.json", arch)


def _read(path: Path, arch: str) -> dict:
    if not path.exists():
        return {"meta": {"arch": arch, "gpus": {}}, "entries": {}}
    data = json.loads(path.read_text())
    data.setdefault("meta", {"arch": arch}).setdefault("gpus", {})
    data.setdefault("entries", {})
    return data


@functools.lru_cache(maxsize=None)
def local_gpu_name(arch: str) -> str | None:
    """This machine's GPU name when its arch is ``arch`` (the key of its own tuned entries)."""
    if arch == "cpu":
        return None
    if not torch.cuda.is_available() or current_arch() != arch:
        return None
    return torch.cuda.get_device_name()


def tuned_entry(spec: VariantSpec, arch: str, bucket: str, gpu_name: str | None = None) -> Config | None:
    """The tuned config for this variant and bucket: this GPU's if present, else any GPU of the arch."""
    per_gpu = load_tune_cache(arch)["entries"].get(f"{spec.id}|{bucket}")
    if not per_gpu:
        return None
    gpu_name = gpu_name or local_gpu_name(arch)
    if gpu_name in per_gpu:
        return dict(per_gpu[gpu_name]["config"])
    return dict(per_gpu[sorted(per_gpu)[0]]["config"])


def config_for(spec: VariantSpec, arch: str, bucket: str = "any", gpu_name: str | None = None) -> Config:
    """The launch config to use: tuned if cached, else the arch's documented default.  A tuned or
    forced config is completed with the default's keys, so an entry tuned before a parameter
    existed still names every one."""
    limits = check_arch(arch)
    forced = _OVERRIDES.get(spec.id) if _OVERRIDES else None
    chosen = forced if forced is not None else tuned_entry(spec, arch, bucket, gpu_name)
    config = {**default_config(spec, limits), **(chosen or {})}
    if _RECORDERS:
        for seen in _RECORDERS:
            seen.append(Lookup(spec, arch, bucket, dict(config), forced is not None))
    return config


@functools.lru_cache(maxsize=4096)
def launch_config(spec: VariantSpec, device: torch.device, bucket: str = "any") -> Config:
    """``config_for`` on ``device``'s arch, memoised for the launchers' hot path (cleared by
    ``invalidate``, so overrides and rewritten cache files still reach it).  Do not mutate."""
    return config_for(spec, current_arch(device), bucket)


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


# ------------------------------------------------------------------ writing
def merge_entries(data: dict, gpu_name: str, entries: dict[str, dict], gpu_meta: dict) -> dict:
    """``data`` (a parsed cache) with this GPU's ``entries`` and metadata merged in.

    Other GPUs' entries and this GPU's entries for other keys are kept; an entry for the
    same key and GPU is replaced.
    """
    merged = json.loads(json.dumps(data))  # deep copy, JSON types only
    meta = merged.setdefault("meta", {})
    meta.setdefault("gpus", {})[gpu_name] = dict(gpu_meta)
    for field in ("triton", "torch", "tqgen", "date"):
        if field in gpu_meta:
            meta[field] = gpu_meta[field]
    table = merged.setdefault("entries", {})
    for key, entry in entries.items():
        table.setdefault(key, {})[gpu_name] = entry
    return merged


def atomic_write_json(path: Path, data: dict) -> None:
    """Write ``data`` as sorted, indented JSON to ``path``, atomically (never half-written)."""
    atomic_write(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock next to ``path`` (POSIX; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_entries(
    arch: str,
    gpu_name: str,
    entries: dict[str, dict],
    gpu_meta: dict,
    cache_dir: Path | None = None,
) -> Path:
    """Merge ``entries`` (key ``"<variant id>|<bucket>"``) for ``gpu_name`` into ``<cache_dir>/<arch>.json``."""
    path = Path(cache_dir or TUNE_CACHE_DIR) / f"{arch}.json"
    with _locked(path):
        data = merge_entries(_read(path, arch), gpu_name, entries, gpu_meta)
        data["meta"]["arch"] = arch
        atomic_write_json(path, data)
    invalidate()
    return path


def now_utc() -> str:
    """ISO date-time in UTC, seconds resolution (stamped into caches and bench results)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
