"""The benchmark suites on tiny shapes with a stub timer: rows, checks, targets, tables, JSON.

Timings here are meaningless (the stub returns a constant, the kernels run in the
interpreter on the CPU); the tests check that every suite produces complete, verified rows
against torch's CPU SDPA, and that the report and JSON logic is right.  No timing assertions.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from tqgen.bench import compress, decode, e2e, prefill, report, run_bench, run_suites
from tqgen.bench.common import BenchContext, Target, copy_bandwidth, time_sdpa, with_target

HEADS = (4, 1, 64)  # q heads, kv heads, head_dim: a GQA group of 4, small D


def stub_timer(fn) -> float:
    fn()  # still run it once: a broken launch must fail the test
    return 0.5


@pytest.fixture
def ctx(device) -> BenchContext:
    return BenchContext(device=torch.device(device), timer=stub_timer, copy_tbps=1e-3, log=lambda msg: None)


def _ok_rows(rows):
    return [r for r in rows if r["impl"] == "tqgen"]


def test_decode_suite_tiny(ctx):
    result = decode.run(ctx, [decode.DecodeCase(2, 80, ("K4V4", "K4", "K3V3")), decode.DecodeCase(1, 1, ("K2V2",))],
                        heads=HEADS)
    rows = result["rows"]
    assert [r["impl"] for r in rows] == ["sdpa", "tqgen", "tqgen", "tqgen", "sdpa", "tqgen"]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    sdpa = rows[0]
    assert sdpa["backend"] and sdpa["bytes"] == 2 * 2 * 80 * 64 * 2 + 2 * 2 * 4 * 64 * 2
    for r in _ok_rows(rows):
        assert r["check_ok"] and r["check_rel_l2"] < 2e-2
        assert r["tbps"] > 0 and math.isclose(r["frac_copy"], r["tbps"] / 1e-3) and r["vs_sdpa"] == 1.0
    k4v4, k4 = rows[1], rows[2]
    assert k4v4["bytes"] < k4["bytes"] < sdpa["bytes"]  # codes + norms are fewer bytes than fp16
    if ctx.device.type == "cpu":
        assert result["cuda_graph"] == {"checked": False}


def test_prefill_suite_tiny(ctx):
    cases = [prefill.PrefillCase("square", 1, 40, 40, ("fp", "K4V4"), (("fp", 0.85), ("K4V4", 0.7))),
             prefill.PrefillCase("chunk", 2, 16, 80, ("K4V4",), (("K4V4", 0.7),))]
    rows = prefill.run(ctx, cases, heads=HEADS)["rows"]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows]
    assert [(r["case"], r["impl"]) for r in rows] == [
        ("square", "sdpa"), ("square", "tqgen"), ("square", "tqgen"), ("chunk", "sdpa"), ("chunk", "tqgen")]
    for r in _ok_rows(rows):
        assert r["check_ok"] and r["pass"] is True and r["target"].startswith(">=")
    # The chunk keeps (query, key) pairs bottom-right: query i sees 80 - 16 + i + 1 keys.
    assert cases[1].causal_pairs() == sum(64 + i + 1 for i in range(16))
    assert rows[-1]["flops"] == 4 * 2 * 4 * cases[1].causal_pairs() * 64


def test_compress_suite_tiny(ctx):
    rows = compress.run(ctx, [compress.CompressCase(100, 2, 4), compress.CompressCase(33, 3, 2)], head_dim=64)["rows"]
    assert all(r["error"] is None and r["check_ok"] for r in rows), rows
    assert rows[0]["bytes"] == 2 * 100 * 64 * 2 + 2 * 100 * (32 + 4)
    assert rows[0]["target"] == ">=50% copy bw" and "target" not in rows[1]


def test_e2e_suite_tiny(ctx):
    """All four contenders (compiled ones through aot_eager on the CPU) in one run, with their metrics."""
    shape = e2e.ModelShape(hidden=128, layers=2, q_heads=4, kv_heads=1, head_dim=64, intermediate=256, vocab=256)
    case = e2e.E2ECase(2, 60, 1, warmup=1, rounds=2)
    torch._dynamo.reset()
    result = e2e.run(ctx, [case], shape=shape)
    torch._dynamo.reset()
    rows = {r["impl"]: r for r in result["rows"]}
    assert list(rows) == list(e2e.IMPLS), result["rows"]
    assert all(r["error"] is None for r in rows.values()), [r["error"] for r in rows.values()]
    base = rows[e2e.SDPA]
    for impl in (e2e.TQGEN, e2e.TQGEN_STATIC):
        assert rows[impl]["kv_cache_gib"] < rows[e2e.SDPA_STATIC]["kv_cache_gib"]
        assert rows[impl]["logits_cos_vs_sdpa"] > 0.95  # same K/V and tokens: only the 4-bit error differs
    assert rows[e2e.SDPA_STATIC]["logits_cos_vs_sdpa"] > 0.999
    for impl, row in rows.items():
        assert row["tokens_per_s"] > 0 and row["finite_logits"] and "first_logits" not in row
        assert row["steps"] == 2 and len(row["ms_per_step_rounds"]) == 2  # alternating rounds, median round
        assert math.isclose(row["tokens_per_s"], 2 / (row["ms_per_step"] / 1e3))
        assert ("compile_s" in row) == (impl in e2e.COMPILED)
        assert row["vs_sdpa"] > 0 and row["vs_sdpa_static"] > 0
        fp16 = impl in (e2e.SDPA, e2e.SDPA_STATIC)
        kv = 2 * 2 * 2 * 1 * 60 * (2 * 64 if fp16 else 32 + 4)  # K+V, layers, B, kv heads, tokens, bytes a vector
        assert row["bytes_per_step"] - kv == base["bytes_per_step"] - 2 * 2 * 2 * 60 * 128


def test_time_sdpa_picks_the_fastest_backend(device):
    q = torch.randn(1, 4, 8, 64, device=device, dtype=torch.float16)
    k = torch.randn(1, 1, 24, 64, device=device, dtype=torch.float16)
    times = iter([3.0, 1.0, 2.0, 4.0])
    res = time_sdpa(q, k, k, lambda fn: (fn(), next(times))[1], is_causal=True)
    timed = {name: v["ms"] for name, v in res.per_backend.items() if "ms" in v}
    assert res.ms == min(timed.values()) and timed[res.backend] == res.ms
    assert res.output.shape == q.shape


def test_copy_bandwidth_counts_read_and_write(device):
    tbps = copy_bandwidth(device, lambda fn: (fn(), 1.0)[1], nbytes=1 << 20)
    assert math.isclose(tbps, 2 * (1 << 20) / 1e-3 / 1e12)


def test_targets_and_summary(tmp_path):
    rows = [
        with_target({"case": "a", "impl": "tqgen", "mode": "K4V4", "frac_copy": 0.75, "error": None},
                    Target("frac_copy", 0.70, ">=70% copy bw")),
        with_target({"case": "b", "impl": "tqgen", "mode": "K4V4", "frac_copy": 0.95, "check_ok": False, "error": None},
                    Target("frac_copy", 0.70, ">=70% copy bw")),  # fast but wrong
        with_target({"case": "c", "impl": "tqgen", "mode": "K2V2", "error": "boom"},
                    Target("frac_copy", 0.60, ">=60% copy bw")),
        {"case": "d", "impl": "sdpa", "mode": "fp16", "ms": float("nan"), "error": None},
    ]
    assert [r.get("pass") for r in rows] == [True, False, False, None]
    results = {"meta": {"gpu": "test", "copy_tbps": 3.0, "date": "today"},
               "suites": {"decode": {"rows": rows, "cuda_graph": {"checked": True, "capturable": False, "error": "no"}}}}
    path = tmp_path / "bench.json"
    report.write_json(path, results)
    saved = json.loads(path.read_text())
    assert saved["suites"]["decode"]["rows"][3]["ms"] is None  # NaN -> null
    summary = report.summary_table(saved)
    assert "1/4 targets met" in summary and "FAIL" in summary and "PASS" in summary
    table = report.suite_table("decode", saved["suites"]["decode"])
    assert "boom" in table and "NOT capturable" in table
    assert report.main([str(path), "--summary"]) == 0


def test_plot(tmp_path):
    results = {"meta": {}, "suites": {"decode": {"rows": [
        {"B": 1, "N_kv": n, "ms": n / 1e5, "impl": impl, "mode": "K4V4"} for n in (4096, 8192) for impl in ("sdpa", "tqgen")]}}}
    path = tmp_path / "decode.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report.plot_decode(results, path) is False and not path.exists()
        return
    assert report.plot_decode(results, path) is True and path.stat().st_size > 0


def test_run_suites_saves_after_each_and_survives_a_broken_suite(ctx, monkeypatch):
    def fake_runner(name):
        if name == "prefill":
            def broken(_ctx):
                raise RuntimeError("kernel exploded")
            return broken
        return lambda _ctx: {"rows": [{"suite": name, "case": "x", "impl": "tqgen", "ms": 1.0, "error": None}]}

    monkeypatch.setattr("tqgen.bench.suite_runner", fake_runner)
    saved = []
    results = {"meta": {}, "suites": {}}
    run_suites(ctx, ["decode", "prefill", "compress"], results, {"decode": 1, "prefill": 1, "compress": 1},
               save=lambda r: saved.append(list(r["suites"])))
    assert saved == [["decode"], ["decode", "prefill"], ["decode", "prefill", "compress"]]
    assert "kernel exploded" in results["suites"]["prefill"]["rows"][0]["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the real benchmark")
def test_run_bench_refuses_on_the_cpu(capsys):
    args = argparse.Namespace(suite="decode", json=None, plot=None, compare=None, quick=True)
    assert run_bench(args) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    args.suite = "nonsense"
    assert run_bench(args) == 2
