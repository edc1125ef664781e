"""End-to-end suite: decode tokens/s of a Llama-3-8B-shaped model with a 32K-token KV cache.

The model has Llama-3-8B's shapes (hidden 4096, 32 layers, 32 query / 8 KV heads,
head_dim 128, intermediate 14336, vocabulary 128256, fp16) and random weights, built from
``LlamaConfig`` directly on the GPU (nothing is downloaded).  Weights do not change the
cost of a decode step, so the numbers are those of the real model.

The caches are filled directly with random K/V for ``context`` tokens, one ``update`` per
layer, instead of running a 32K-token prefill through the model (which would time the
prefill, not the decode, and take longer than the whole suite).  The context stays below
32768 so the decode steps stay in the shape bucket the tuner covers.

Compared, at batch 1 and 8: torch SDPA with transformers' ``DynamicCache`` (fp16), and
``tqgen.hf.enable(model, 4, 4)`` (compressed cache read by the fused kernels).  Reported:
decode tokens/s (median of alternating rounds), KV-cache bytes, and peak device
memory during each implementation's fill + warm-up.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from tqgen.bench.common import BenchContext, captured, sync

GIB = 2**30
SDPA, TQGEN = "sdpa+DynamicCache", "tqgen K4V4"
CONTEXT = 32768 - 64  # + warmup + timed steps stays <= 32768 (the tuned kv32768 bucket)
NOTES = (
    "Random weights with Llama-3-8B's shapes, fp16. Caches filled directly with random K/V "
    "(one update per layer) instead of a 32K prefill. Both caches stay alive and the two "
    "implementations decode greedily in alternating rounds (the first to go swaps each round) "
    "of back-to-back steps (forward + argmax), each round timed by host clock between two "
    "device syncs; tokens/s comes from the median round. kv_cache_gib: cache-owned bytes; peak_gib: peak allocated "
    "during this implementation's fill + warm-up, weights included, the other's cache excluded. "
    "logits_cos_vs_sdpa: cosine of the first decode step's logits against the fp16 cache "
    "(same K/V, same token)."
)


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 4096
    layers: int = 32
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    vocab: int = 128256


LLAMA3_8B = ModelShape()


@dataclass(frozen=True)
class E2ECase:
    batch: int
    context: int
    steps: int  # timed decode steps per implementation and round
    warmup: int = 2
    rounds: int = 4  # the two implementations alternate, ``rounds`` times each

    @property
    def name(self) -> str:
        return f"B={self.batch} ctx={self.context}"

    @property
    def tokens_after(self) -> int:
        """Cache length at the end: context + warmup + every timed step."""
        return self.context + self.warmup + self.steps * self.rounds


def cases(quick: bool = False) -> list[E2ECase]:
    steps, rounds = (8, 2) if quick else (12, 4)
    return [E2ECase(1, CONTEXT, steps, rounds=rounds), E2ECase(8, CONTEXT, steps, rounds=rounds)]


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype = torch.float16):
    """A random-weight ``LlamaForCausalLM`` of ``shape``, created on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.q_heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    )
    with torch.device(device):
        try:
            model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers releases that only know `torch_dtype`
            model = LlamaForCausalLM._from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _fill(cache, shape: ModelShape, batch: int, context: int, device, dtype) -> None:
    """``context`` random tokens of K/V in every layer, one ``update`` per layer."""
    gen = torch.Generator(device=device).manual_seed(0)
    for layer in range(shape.layers):
        size = (batch, shape.kv_heads, context, shape.head_dim)
        k = torch.randn(size, device=device, dtype=dtype, generator=gen)
        v = torch.randn(size, device=device, dtype=dtype, generator=gen)
        cache.update(k, v, layer)
        del k, v


def _decode(model, cache, tokens: torch.Tensor, steps: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Greedy decode ``steps`` tokens after ``tokens``; returns (seconds per step, the first step's
    logits, the last tokens).  The steps run back to back, as in generation, with one device sync
    before and one after: the host may run ahead of the device, as it does in real use."""
    first = None
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            tokens = logits[:, -1:].argmax(-1)
            if first is None:
                first = logits[:, -1]
    sync()
    return (time.perf_counter() - start) / steps, first, tokens


def _kv_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@dataclass
class _Contender:
    """One implementation under test: its cache, its token stream and its row."""

    impl: str
    cache: Any
    tokens: torch.Tensor
    row: dict[str, Any]
    round_step_s: list[float]  # seconds per step of each timed round


def _prepare(ctx: BenchContext, model, shape: ModelShape, case: E2ECase, impl: str,
             weights: int, reference: torch.Tensor | None) -> _Contender:
    """Build and fill ``impl``'s cache, run the warm-up steps; measures cache bytes and the peak
    memory of this phase (minus what the other contender already holds)."""
    import tqgen.hf
    from transformers import DynamicCache

    row: dict[str, Any] = {"suite": "e2e", "case": case.name, "impl": impl, "B": case.batch,
                           "N_kv": case.context, "steps": case.steps * case.rounds, "error": None}
    dev, dtype = ctx.device, next(model.parameters()).dtype
    if ctx.on_gpu:
        torch.cuda.reset_peak_memory_stats(dev)
        held_by_others = torch.cuda.memory_allocated(dev) - weights
    if impl == SDPA:
        tqgen.hf.uninstall_fused_tq4_kv(model)
        cache = DynamicCache(config=model.config)
    else:
        cache = tqgen.hf.enable(model, 4, 4, initial_capacity=case.tokens_after)
    _fill(cache, shape, case.batch, case.context, dev, dtype)
    sync()
    row["kv_cache_gib"] = _kv_bytes(cache) / GIB
    gen = torch.Generator(device=dev).manual_seed(1)
    tokens = torch.randint(0, shape.vocab, (case.batch, 1), device=dev, generator=gen)
    _, first, tokens = _decode(model, cache, tokens, case.warmup)
    row["finite_logits"] = bool(torch.isfinite(first).all())
    if reference is None:
        row["first_logits"] = first.float()  # popped by run(); compares the two caches
    else:
        cos = torch.nn.functional.cosine_similarity(first.float(), reference, dim=-1)
        row["logits_cos_vs_sdpa"] = float(cos.min())
    if ctx.on_gpu:
        row["peak_gib"] = (torch.cuda.max_memory_allocated(dev) - held_by_others) / GIB
    return _Contender(impl, cache, tokens, row, [])


def _time_rounds(model, case: E2ECase, contenders: list[_Contender]) -> None:
    """Alternate the contenders ``case.rounds`` times (the first to go swaps every round), so
    clock and host drift hit both alike; each records its time per step in every round."""
    import tqgen.hf

    for r in range(case.rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            if c.impl == SDPA:
                tqgen.hf.uninstall_fused_tq4_kv(model)
            else:
                tqgen.hf.install_fused_tq4_kv(model, c.cache)
            step_s, _, c.tokens = _decode(model, c.cache, c.tokens, case.steps)
            c.round_step_s.append(step_s)


def _summarise(c: _Contender, case: E2ECase) -> dict[str, Any]:
    """tokens/s from the median round (robust to one slow round), plus every round's time."""
    median = statistics.median(c.round_step_s)
    c.row.update(s=sum(c.round_step_s) * case.steps, ms_per_step=1e3 * median,
                 ms_per_step_rounds=[round(1e3 * t, 3) for t in c.round_step_s],
                 tokens_per_s=case.batch / median)
    return c.row


def _run_case(ctx: BenchContext, model, shape: ModelShape, case: E2ECase, weights: int) -> list[dict[str, Any]]:
    """Both contenders' rows for ``case`` (plus the failing step's, if one fails); the model
    leaves with its own attention back and no cache held."""
    import tqgen.hf

    contenders: list[_Contender] = []
    try:
        for impl in (SDPA, TQGEN):
            ctx.log(f"e2e {case.name} {impl}: fill + warm-up")
            reference = contenders[0].row.get("first_logits") if contenders else None
            failed = {"suite": "e2e", "case": case.name, "impl": impl, "error": None}
            with captured(failed):
                contenders.append(_prepare(ctx, model, shape, case, impl, weights, reference))
            if failed["error"] is not None:
                return [c.row for c in contenders] + [failed]
        ctx.log(f"e2e {case.name}: {case.rounds} alternating rounds of {case.steps} steps")
        timing = {"suite": "e2e", "case": case.name, "impl": "-", "error": None}
        with captured(timing):
            _time_rounds(model, case, contenders)
        if timing["error"] is not None:
            return [c.row for c in contenders] + [timing]
        rows = [_summarise(c, case) for c in contenders]
        rows[1]["vs_sdpa"] = _speedup(rows[0], rows[1])
        return rows
    finally:
        tqgen.hf.uninstall_fused_tq4_kv(model)
        for c in contenders:  # the returned rows are these dicts
            c.row.pop("first_logits", None)
        contenders.clear()
        gc.collect()
        if ctx.on_gpu:
            torch.cuda.empty_cache()


def run(ctx: BenchContext, selected: list[E2ECase] | None = None, shape: ModelShape = LLAMA3_8B) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    selected = selected if selected is not None else cases(ctx.quick)
    model = None
    build: dict[str, Any] = {"suite": "e2e", "case": "build model", "impl": "-", "error": None}
    with captured(build):
        start = time.perf_counter()
        model = build_model(shape, ctx.device)
        sync()
        build["s"] = time.perf_counter() - start
        ctx.log(f"e2e: model with {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters "
                f"built in {build['s']:.1f} s")
    if model is None:
        return {"rows": [build]}
    weights = torch.cuda.memory_allocated(ctx.device) if ctx.on_gpu else 0
    for case in selected:
        if ctx.deadline.expired():
            rows += [{"suite": "e2e", "case": case.name, "impl": impl, "error": "skipped: suite time budget spent"}
                     for impl in (SDPA, TQGEN)]
            continue
        rows += _run_case(ctx, model, shape, case, weights)
    del model
    gc.collect()
    if ctx.on_gpu:
        torch.cuda.empty_cache()
    return {"rows": rows, "notes": NOTES, "model": dict(shape.__dict__)}


def _speedup(base: dict[str, Any], ours: dict[str, Any]) -> float | None:
    """tokens/s of ours over the baseline's."""
    if base.get("tokens_per_s") and ours.get("tokens_per_s"):
        return ours["tokens_per_s"] / base["tokens_per_s"]
    return None
