"""The tune cache on the CPU: lookups, overrides and their invalidation, the atomic merge-writer
(``tmp_cache``: tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

from tqgen.spec import Family, VariantSpec
from tqgen.tuning import cache
from tqgen.tuning.arch import ARCH_LIMITS
from tqgen.tuning.defaults import default_config

CPU = ARCH_LIMITS["cpu"]
COMPRESS4 = VariantSpec(Family.COMPRESS, 64, 4, rotate=True)


# ------------------------------------------------------------------ lookups
def test_override_wins_and_lookups_are_recorded(tmp_cache):
    default = default_config(COMPRESS4, CPU)
    with cache.record_lookups() as seen:
        assert cache.config_for(COMPRESS4, "cpu") == default
        with cache.override(COMPRESS4.id, {"BLOCK_T": 16}):
            forced = cache.config_for(COMPRESS4, "cpu")
        after = cache.config_for(COMPRESS4, "cpu")
    assert forced == {**default, "BLOCK_T": 16}
    assert after == default
    assert [lk.overridden for lk in seen] == [False, True, False]
    assert {lk.spec for lk in seen} == {COMPRESS4} and seen[0].bucket == "any"


def test_override_and_writes_call_invalidators(tmp_cache):
    calls = []
    fn = cache.register_invalidator(lambda: calls.append(1))
    try:
        with cache.override(COMPRESS4.id, {"BLOCK_T": 16}):
            pass
        cache.write_entries("cpu", "gpu-a", {}, {}, tmp_cache)
    finally:
        cache._INVALIDATORS.remove(fn)
    assert len(calls) == 3  # override enter + exit, write


def test_lookup_prefers_this_gpu_else_any(tmp_cache):
    key = f"{COMPRESS4.id}|any"
    cache.write_entries("cpu", "gpu-a", {key: {"config": {"BLOCK_T": 16, "num_warps": 4, "num_stages": 1}}}, {}, tmp_cache)
    cache.write_entries("cpu", "gpu-b", {key: {"config": {"BLOCK_T": 128, "num_warps": 4, "num_stages": 1}}}, {}, tmp_cache)
    assert cache.config_for(COMPRESS4, "cpu", "any", "gpu-b")["BLOCK_T"] == 128
    assert cache.config_for(COMPRESS4, "cpu", "any", "gpu-a")["BLOCK_T"] == 16
    assert cache.config_for(COMPRESS4, "cpu", "any", "gpu-c")["BLOCK_T"] == 16  # any GPU of the arch
    other = VariantSpec(Family.COMPRESS, 64, 2, rotate=True)
    assert cache.config_for(other, "cpu", "any", "gpu-a") == default_config(other, CPU)


# ------------------------------------------------------------------ writing
def test_merge_keeps_other_gpus_and_keys():
    data = {"meta": {"arch": "sm_90", "gpus": {"H100": {"date": "d1"}}},
            "entries": {"a|x": {"H100": {"config": {"B": 1}}}, "b|y": {"H100": {"config": {"B": 2}}}}}
    merged = cache.merge_entries(data, "H200", {"a|x": {"config": {"B": 3}}, "c|z": {"config": {"B": 4}}},
                                 {"date": "d2", "sm_count": 132})
    assert merged["entries"]["a|x"] == {"H100": {"config": {"B": 1}}, "H200": {"config": {"B": 3}}}
    assert merged["entries"]["b|y"] == {"H100": {"config": {"B": 2}}}
    assert merged["entries"]["c|z"] == {"H200": {"config": {"B": 4}}}
    assert set(merged["meta"]["gpus"]) == {"H100", "H200"} and merged["meta"]["date"] == "d2"
    assert data["entries"]["a|x"] == {"H100": {"config": {"B": 1}}}  # input untouched
    replaced = cache.merge_entries(merged, "H100", {"a|x": {"config": {"B": 5}}}, {})
    assert replaced["entries"]["a|x"]["H100"] == {"config": {"B": 5}}


def test_interrupted_write_leaves_the_old_file(tmp_cache, monkeypatch):
    path = cache.write_entries("cpu", "gpu-a", {"k|any": {"config": {"BLOCK_T": 16}}}, {"date": "d1"}, tmp_cache)
    before = path.read_text()

    def broken_fsync(*args, **kwargs):  # the new bytes are in the temporary file, not yet in place
        raise RuntimeError("disk full")

    import tqgen.files

    monkeypatch.setattr(tqgen.files.os, "fsync", broken_fsync)
    with pytest.raises(RuntimeError, match="disk full"):
        cache.write_entries("cpu", "gpu-a", {"k2|any": {"config": {}}}, {}, tmp_cache)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_cache.iterdir() if not p.name.endswith(".lock")) == ["cpu.json"]


def test_the_dispatcher_forgets_its_plans_with_the_configs(tmp_cache, device):
    """attention() memoises plans holding reduce configs: an override or a cache write drops them."""
    api = importlib.import_module("tqgen.attention")
    q, k = torch.randn(1, 2, 1, 32, device=device), torch.randn(1, 1, 8, 32, device=device)
    api.attention(q, k, k)
    assert api._PLANS and api._PLAN_OF
    with cache.override(COMPRESS4.id, {"BLOCK_T": 16}):
        assert not api._PLANS and not api._PLAN_OF
