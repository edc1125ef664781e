"""The tuner (``tqgen.bench.tune``) on the CPU: candidates, the plan, and a quick tune of tiny
problems through the real kernels (interpreter) with a stub timer.

No timing assertions: the stub timer makes the "fastest" candidate a known one, so the test
checks the choice logic, the verification and what lands in the JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest
import torch

from tqgen.bench import tune as tuner
from tqgen.bench.common import Deadline
from tqgen.spec import Family, VariantSpec
from tqgen.tuning import cache
from tqgen.tuning.arch import ARCH_LIMITS, current_arch
from tqgen.tuning.defaults import default_config

CPU = ARCH_LIMITS["cpu"]
COMPRESS4 = VariantSpec(Family.COMPRESS, 64, 4, rotate=True)


def _forced() -> dict:
    """The config the tuner is forcing right now (what a stub timer keys on)."""
    assert len(cache._OVERRIDES) == 1
    return next(iter(cache._OVERRIDES.values()))


def block_timer(fn) -> float:
    """Stub: bigger blocks are 'faster', and a smaller split minimum too."""
    fn()
    cfg = _forced()
    block = cfg.get("BLOCK_N", cfg.get("BLOCK_T", 1)) * cfg.get("BLOCK_M", 1)
    return 1.0 / block + 1e-4 * cfg.get("SPLIT_MIN_TOKENS", 0)


def _ctx(tmp_path, device="cpu", timer=block_timer, **kw) -> tuner.TuneContext:
    return tuner.TuneContext(
        arch=current_arch(torch.device(device)), device=torch.device(device), timer=timer, gpu_name="cpu-test",
        gpu_meta={"sm_count": 2, "torch": torch.__version__}, quick=True, deadline=Deadline(600),
        cache_dir=tmp_path, max_candidates=kw.pop("max_candidates", 3), log=lambda msg: None, **kw,
    )


# --------------------------------------------------------------- candidates
def test_candidates_start_with_the_default_and_skip_what_cannot_fit():
    spec = VariantSpec(Family.ATTN_PREFILL, 128, None, None, 4, True)
    limits = ARCH_LIMITS["sm_86"]
    default = default_config(spec, limits)
    configs = tuner.tile_candidates(spec, default, quick=False)
    assert configs[0] == default and len(configs) == len({tuple(sorted(c.items())) for c in configs})
    fits = [c for c in configs if tuner.smem_estimate(spec, c) <= limits.smem_per_block]
    assert default in fits and 0 < len(fits) < len(configs)
    decode = VariantSpec(Family.ATTN_DECODE, 128, 4, 4, 4, False, True)
    best = default_config(decode, limits)
    assert all(c["SPLIT_MIN_TOKENS"] != best["SPLIT_MIN_TOKENS"] for c in tuner.split_candidates(best, True))


def test_broken_configs_are_never_launched():
    spec = VariantSpec(Family.ATTN_PREFILL, 128, 4, 4, 4, True, True)
    sm90 = ARCH_LIMITS["sm_90"]
    default = default_config(spec, sm90)
    assert tuner.known_bad(spec, default, sm90) is None
    assert tuner.known_bad(spec, {**default, "BLOCK_M": 128, "num_warps": 8}, sm90)
    assert tuner.known_bad(spec, {**default, "BLOCK_M": 128, "num_warps": 8}, CPU) is None  # interpreter: fine
    k_only = VariantSpec(Family.ATTN_PREFILL, 128, 4, None, 4, True, True)
    assert tuner.known_bad(k_only, {**default, "BLOCK_M": 128}, sm90) is None


def test_plan_and_only():
    quick = tuner.plan(quick=True)
    ids = {p.expected_id() for p in quick}
    assert "attn_decode_d128_k4v4_g4_rot" in ids and "attn_prefill_d128_fp_g4_causal" in ids
    assert "compress_d128_b4_rot" in ids and len(quick) == len(set(quick))
    assert len(tuner.plan(quick=False)) > len(quick)
    only = tuner.select_problems(quick, "k2v2")
    assert only and all("k2v2" in p.expected_id() for p in only)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would tune for real")
def test_run_tune_refuses_without_a_gpu(capsys):
    args = argparse.Namespace(arch="sm_90", only=None, quick=True)
    assert tuner.run_tune(args) == 2
    assert "tqgen tune" in capsys.readouterr().err


# -------------------------------------------------------------- end to end
@pytest.mark.skipif(torch.cuda.is_available(), reason="stub-timer test of the interpreter path; on a GPU .ci/gpu-session runs the real tuner")
def test_quick_tune_of_tiny_problems(tmp_cache, device):
    problems = [
        tuner.AttentionProblem("decode", "K4V4", 2, 1, 80, q_heads=4, kv_heads=1, head_dim=64),
        tuner.AttentionProblem("prefill", "K4V4", 1, 40, 80, causal=True, q_heads=4, kv_heads=1, head_dim=64),
        tuner.CompressProblem(4, 100, heads=2, head_dim=64),
        tuner.CompressProblem(4, 60, heads=2, head_dim=64),  # same variant and bucket: not tuned twice
    ]
    ctx = _ctx(tmp_cache, device)
    summaries = tuner.tune(ctx, problems)
    assert [s["key"].split("|")[0] for s in summaries] == [
        "attn_decode_d64_k4v4_g4_rot", "attn_prefill_d64_k4v4_g4_causal_rot", "compress_d64_b4_rot"]
    data = json.loads((tmp_cache / f"{ctx.arch}.json").read_text())
    assert data["meta"]["gpus"]["cpu-test"]["sm_count"] == 2
    for summary in summaries:
        entry = data["entries"][summary["key"]]["cpu-test"]
        timed = [c for c in entry["candidates"] if c.get("ms") is not None]
        assert entry["ms"] == min(c["ms"] for c in timed) < entry["default_ms"]
        assert entry["config"] == min(timed, key=lambda c: c["ms"])["config"]
        assert entry["verified"].startswith(("rel L2", "0.0e+00"))
    decode = data["entries"][summaries[0]["key"]]["cpu-test"]
    splits = {c["config"]["SPLIT_MIN_TOKENS"] for c in decode["candidates"]}
    assert len(splits) > 1  # the second stage (split policy) ran
    # The dispatcher now finds the tuned config (the file was re-read after the write).
    tuned = data["entries"][f"{COMPRESS4.id}|any"]["cpu-test"]["config"]
    assert cache.config_for(COMPRESS4, ctx.arch, "any", "cpu-test") == tuned


@dataclass(frozen=True)
class WrongAtBigBlocks(tuner.Problem):
    """A fake op whose output is wrong under BLOCK_T=128 (which the stub timer calls fastest)."""

    families = (Family.COMPRESS,)

    @property
    def label(self) -> str:
        return "fake"

    def expected_id(self) -> str:
        return COMPRESS4.id

    def build(self, device, seed):
        x = torch.randn(64, generator=torch.Generator().manual_seed(seed))
        out = torch.empty(64)

        def run():
            cfg = cache.config_for(COMPRESS4, "cpu")
            out.copy_(x + (1.0 if cfg["BLOCK_T"] == 128 else 0.0))
            return out

        return run


def test_a_wrong_config_is_never_chosen(tmp_cache):
    (summary,) = tuner.tune(_ctx(tmp_cache, max_candidates=None), [WrongAtBigBlocks()])
    entry = json.loads((tmp_cache / "cpu.json").read_text())["entries"][summary["key"]]["cpu-test"]
    wrong = [c for c in entry["candidates"] if c["config"]["BLOCK_T"] == 128]
    assert wrong and all("output differs" in c["error"] and "ms" not in c for c in wrong)
    assert entry["config"]["BLOCK_T"] != 128


def test_a_failing_candidate_is_recorded_not_raised(tmp_cache):
    def timer(fn):
        if _forced()["BLOCK_T"] == 32:
            raise RuntimeError("out of resources: shared memory")
        return block_timer(fn)

    (summary,) = tuner.tune(_ctx(tmp_cache, timer=timer, max_candidates=None), [WrongAtBigBlocks()])
    entry = json.loads((tmp_cache / "cpu.json").read_text())["entries"][summary["key"]]["cpu-test"]
    assert any("out of resources" in (c.get("error") or "") for c in entry["candidates"])
