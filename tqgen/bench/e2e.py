"""End-to-end suite: decode tokens/s of a Llama-3-8B-shaped model with a long KV cache.

The model has Llama-3-8B's shapes (hidden 4096, 32 layers, 32 query / 8 KV heads,
head_dim 128, intermediate 14336, vocabulary 128256, fp16) and random weights, built from
``LlamaConfig`` directly on the GPU (nothing is downloaded).  Weights do not change the
cost of a decode step, so the numbers are those of the real model.

The caches are filled directly with random K/V for ``context`` tokens, one ``update`` per
layer, instead of running a long prefill through the model (which would time the prefill,
not the decode, and take longer than the whole suite).  The context stays below 32768 so
the decode steps stay in the shape bucket the tuner covers.

Four contenders per case, all alive at once and alternating over rounds:

* ``sdpa+DynamicCache``: transformers' default, eager;
* ``sdpa+StaticCache+compile``: transformers' StaticCache under
  ``torch.compile(mode="reduce-overhead", fullgraph=True)`` (CUDA graphs);
* ``tqgen dynamic K4V4``: ``tqgen.hf.enable(model, 4, 4)``, eager;
* ``tqgen static K4V4+compile``: ``tqgen.hf.enable(model, 4, 4, static=True, ...)`` under the
  same ``torch.compile``.

Reported: decode tokens/s (median of alternating rounds), the fraction of the bytes-per-step
ceiling (all weights + the cached K/V read once per step, at the measured copy bandwidth),
KV-cache bytes, peak device memory during each contender's fill + warm-up, and for the
compiled contenders the time of their first (compiling, capturing) steps.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from tqgen.bench.common import BenchContext, captured, sync

GIB = 2**30
SDPA, SDPA_STATIC = "sdpa+DynamicCache", "sdpa+StaticCache+compile"
TQGEN, TQGEN_STATIC = "tqgen dynamic K4V4", "tqgen static K4V4+compile"
IMPLS = (SDPA, SDPA_STATIC, TQGEN, TQGEN_STATIC)
COMPILED = (SDPA_STATIC, TQGEN_STATIC)
CONTEXT = 32768 - 64  # + warmup + timed steps stays <= 32768 (the tuned kv32768 bucket)
NOTES = (
    "Random weights with Llama-3-8B's shapes, fp16. Caches filled directly with random K/V "
    "(one update per layer) instead of a prefill. All four caches stay alive and the contenders "
    "decode greedily in alternating rounds (the order reverses each round) of back-to-back steps "
    "(forward + argmax), each round timed by host clock between two device syncs; tokens/s comes "
    "from the median round. Compiled contenders: torch.compile(model, mode='reduce-overhead', "
    "fullgraph=True); compile_s is the wall time of their warm-up steps (compile + CUDA-graph capture). "
    "ceiling_tokens_per_s: B * copy bandwidth / (all weight bytes + the cache's K/V bytes for the "
    "cached tokens), frac_ceiling = tokens_per_s / ceiling. kv_cache_gib: K/V storage "
    "(static caches: their whole capacity); cache_alloc_gib: everything tqgen's cache allocated (codebooks, "
    "the static cache's decode workspace); peak_gib: peak "
    "allocated during this contender's fill + warm-up, weights included, the others' caches excluded. "
    "logits_cos_vs_sdpa: cosine of the first decode step's logits against sdpa+DynamicCache "
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
    """B=8 and B=1 at 32K cached tokens (the targets, first), then B=32 at 8K."""
    steps, rounds = (8, 2) if quick else (12, 4)
    return [E2ECase(8, CONTEXT, steps, warmup=3, rounds=rounds), E2ECase(1, CONTEXT, steps, warmup=3, rounds=rounds),
            E2ECase(32, 8192 - 64, steps, warmup=3, rounds=rounds)]


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


def _decode(forward: Callable[..., Any], cache_kwargs: dict[str, Any], tokens: torch.Tensor, steps: int,
            compiled: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Greedy decode ``steps`` tokens after ``tokens``; returns (seconds per step, the first step's
    logits, the last tokens).  The steps run back to back, as in generation, with one device sync
    before and one after: the host may run ahead of the device, as it does in real use."""
    first = None
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
            logits = forward(input_ids=tokens, use_cache=True, logits_to_keep=1, **cache_kwargs).logits
            tokens = logits[:, -1:].argmax(-1)
            if first is None:
                first = logits[:, -1].float()  # a copy: CUDA-graph outputs are overwritten by the next replay
    sync()
    return (time.perf_counter() - start) / steps, first, tokens


def _kv_bytes(cache) -> int:
    """Bytes of the cache's K/V storage (codes + norms for tqgen's caches)."""
    for method in ("kv_nbytes", "nbytes"):
        if hasattr(cache, method):
            return int(getattr(cache, method)())
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
    round_step_s: list[float] = field(default_factory=list)  # seconds per step of each timed round


def _activate(model, impl: str, cache: Any) -> None:
    """Point ``model``'s attention at what ``impl`` runs on ``cache``."""
    import tqgen.hf

    if impl in (SDPA, SDPA_STATIC):
        tqgen.hf.uninstall_fused_tq4_kv(model)
    elif impl == TQGEN:
        tqgen.hf.install_fused_tq4_kv(model, cache)
    else:
        tqgen.hf.install_static_cache(model, cache)


def _new_cache(model, impl: str, case: E2ECase):
    import tqgen.hf
    from transformers import DynamicCache, StaticCache

    if impl == SDPA:
        tqgen.hf.uninstall_fused_tq4_kv(model)
        return DynamicCache(config=model.config)
    if impl == SDPA_STATIC:
        tqgen.hf.uninstall_fused_tq4_kv(model)
        return StaticCache(config=model.config, max_cache_len=case.tokens_after)
    if impl == TQGEN:
        return tqgen.hf.enable(model, 4, 4, initial_capacity=case.tokens_after)
    return tqgen.hf.enable(model, 4, 4, static=True, max_cache_len=case.tokens_after)


def _kv_read_bytes(impl: str, shape: ModelShape, batch: int, tokens: int) -> int:
    """K/V bytes one decode step must read for ``tokens`` cached tokens (fp16, or 4-bit codes + fp32 norms)."""
    per_vector = 2 * shape.head_dim if impl in (SDPA, SDPA_STATIC) else shape.head_dim // 2 + 4
    return 2 * shape.layers * batch * shape.kv_heads * tokens * per_vector


def _prepare(ctx: BenchContext, model, forwards: dict[str, Callable[..., Any]], shape: ModelShape, case: E2ECase,
             impl: str, weights: int, reference: torch.Tensor | None) -> _Contender:
    """Build and fill ``impl``'s cache, run the warm-up steps (compiling, for compiled contenders);
    measures cache bytes and the peak memory of this phase (minus what the others already hold)."""
    from tqgen.hf import cache_argument

    row: dict[str, Any] = {"suite": "e2e", "case": case.name, "impl": impl, "B": case.batch,
                           "N_kv": case.context, "steps": case.steps * case.rounds, "error": None}
    dev, dtype = ctx.device, next(model.parameters()).dtype
    if ctx.on_gpu:
        torch.cuda.reset_peak_memory_stats(dev)
        held_by_others = torch.cuda.memory_allocated(dev) - weights
    cache = _new_cache(model, impl, case)
    _fill(cache, shape, case.batch, case.context, dev, dtype)
    sync()
    row["kv_cache_gib"] = _kv_bytes(cache) / GIB
    if hasattr(cache, "nbytes"):
        row["cache_alloc_gib"] = cache.nbytes() / GIB  # + tables and the static cache's decode workspace
    gen = torch.Generator(device=dev).manual_seed(1)
    tokens = torch.randint(0, shape.vocab, (case.batch, 1), device=dev, generator=gen)
    cache_kwargs = {cache_argument(model): cache}
    start = time.perf_counter()
    _, first, tokens = _decode(forwards[impl], cache_kwargs, tokens, case.warmup, impl in COMPILED)
    if impl in COMPILED:
        row["compile_s"] = time.perf_counter() - start
    row["finite_logits"] = bool(torch.isfinite(first).all())
    if reference is None:
        row["first_logits"] = first  # popped by _run_case; compares the caches
    else:
        cos = torch.nn.functional.cosine_similarity(first, reference, dim=-1)
        row["logits_cos_vs_sdpa"] = float(cos.min())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    step_bytes = params + _kv_read_bytes(impl, shape, case.batch, case.context)
    row["bytes_per_step"] = step_bytes
    if ctx.copy_tbps:
        row["ceiling_tokens_per_s"] = case.batch * ctx.copy_tbps * 1e12 / step_bytes
    if ctx.on_gpu:
        row["peak_gib"] = (torch.cuda.max_memory_allocated(dev) - held_by_others) / GIB
    return _Contender(impl, cache, tokens, row)


def _time_rounds(model, forwards: dict[str, Callable[..., Any]], case: E2ECase, contenders: list[_Contender]) -> None:
    """Alternate the contenders ``case.rounds`` times (the order reverses every round), so clock
    and host drift hit all alike; each records its time per step in every round."""
    from tqgen.hf import cache_argument

    name = cache_argument(model)
    for r in range(case.rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            _activate(model, c.impl, c.cache)
            step_s, _, c.tokens = _decode(forwards[c.impl], {name: c.cache}, c.tokens, case.steps, c.impl in COMPILED)
            c.round_step_s.append(step_s)


def _summarise(c: _Contender, case: E2ECase) -> dict[str, Any]:
    """tokens/s from the median round (robust to one slow round), plus every round's time."""
    median = statistics.median(c.round_step_s)
    c.row.update(s=sum(c.round_step_s) * case.steps, ms_per_step=1e3 * median,
                 ms_per_step_rounds=[round(1e3 * t, 3) for t in c.round_step_s],
                 tokens_per_s=case.batch / median)
    if c.row.get("ceiling_tokens_per_s"):
        c.row["frac_ceiling"] = c.row["tokens_per_s"] / c.row["ceiling_tokens_per_s"]
    return c.row


def _run_case(ctx: BenchContext, model, forwards: dict[str, Callable[..., Any]], shape: ModelShape,
              case: E2ECase, weights: int) -> list[dict[str, Any]]:
    """Every contender's row for ``case`` (plus the failing step's, if one fails); the model
    leaves with its own attention back and no cache held."""
    import tqgen.hf

    contenders: list[_Contender] = []
    rows: list[dict[str, Any]] = []
    try:
        for impl in forwards:
            ctx.log(f"e2e {case.name} {impl}: fill + warm-up")
            reference = contenders[0].row.get("first_logits") if contenders and contenders[0].impl == SDPA else None
            failed = {"suite": "e2e", "case": case.name, "impl": impl, "error": None}
            with captured(failed):
                contenders.append(_prepare(ctx, model, forwards, shape, case, impl, weights, reference))
            if failed["error"] is not None:  # the others still run
                rows.append(failed)
        ctx.log(f"e2e {case.name}: {case.rounds} alternating rounds of {case.steps} steps")
        timing = {"suite": "e2e", "case": case.name, "impl": "-", "error": None}
        with captured(timing):
            _time_rounds(model, forwards, case, contenders)
        if timing["error"] is not None:
            return [c.row for c in contenders] + rows + [timing]
        ours = {c.impl: _summarise(c, case) for c in contenders}
        for row in ours.values():
            row["vs_sdpa"] = _speedup(ours.get(SDPA), row)
            row["vs_sdpa_static"] = _speedup(ours.get(SDPA_STATIC), row)
        return list(ours.values()) + rows
    finally:
        tqgen.hf.uninstall_fused_tq4_kv(model)
        for c in contenders:  # the returned rows are these dicts
            c.row.pop("first_logits", None)
        contenders.clear()
        gc.collect()
        if ctx.on_gpu:
            torch.cuda.empty_cache()


def _forwards(model, on_gpu: bool, impls: tuple[str, ...]) -> dict[str, Callable[..., Any]]:
    """The callable each contender decodes with: the model, or one shared ``torch.compile`` of it
    (reduce-overhead on the GPU; aot_eager, the real kernels without Inductor, on the CPU)."""
    options = (dict(mode="reduce-overhead", fullgraph=True, dynamic=False) if on_gpu
               else dict(backend="aot_eager", fullgraph=True, dynamic=False))
    compiled = torch.compile(model, **options)
    return {impl: compiled if impl in COMPILED else model for impl in impls}


def run(ctx: BenchContext, selected: list[E2ECase] | None = None, shape: ModelShape = LLAMA3_8B,
        impls: tuple[str, ...] = IMPLS) -> dict[str, Any]:
    """Every case of ``selected`` (default :func:`cases`) with the contenders ``impls``."""
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
                     for impl in impls]
            continue
        # A fresh compile per case: with one shared compile, each batch size's recompiles added up
        # until the third case hit torch.compile's recompile limit (fullgraph=True then fails).
        torch._dynamo.reset()
        forwards = _forwards(model, ctx.on_gpu, impls)
        rows += _run_case(ctx, model, forwards, shape, case, weights)
    del model
    gc.collect()
    if ctx.on_gpu:
        torch.cuda.empty_cache()
    return {"rows": rows, "notes": NOTES, "model": dict(shape.__dict__)}


def _speedup(base: dict[str, Any] | None, ours: dict[str, Any]) -> float | None:
    """tokens/s of ours over the baseline's."""
    if base and base.get("tokens_per_s") and ours.get("tokens_per_s"):
        return ours["tokens_per_s"] / base["tokens_per_s"]
    return None
